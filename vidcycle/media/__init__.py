"""Files of pixels: video in and out (PyAV), photos (OpenCV, with Pillow for headers), optical flow between
frames, and the pictures vidcycle draws (grids, curves). Each third-party library is imported here only,
where its failures become MediaError."""

"""Files of pixels: video in and out (PyAV), photos (OpenCV, with Pillow for headers), optical flow between
frames, and the pictures vidcycle draws (grids, curves). Decoding and encoding happen here, where each
library's failures become MediaError. Elsewhere OpenCV is arithmetic on frames already in memory
(resizing, colour spaces, metrics), and PyAV is used for packets only: apply.segments copies segments'
packets into the joined file, quality.flicker counts a file's audio and subtitle packets.
"""

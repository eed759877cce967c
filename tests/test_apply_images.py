"""Photos of every kind come out upright, at their size, in their format, with their depth and alpha."""

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from conftest import run_cli
from vidcycle.apply.jobs import ApplyOptions, translate_image, translate_image_bytes
from vidcycle.errors import MediaError
from vidcycle.media.images import decode_image, encode_image, read_image, sniff_suffix
from vidcycle.models.modelfile import ModelInfo
from vidcycle.models.nets import GeneratorSpec
from vidcycle.runtime.translator import Translator


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x


@pytest.fixture(scope="module")
def identity():
    return Translator(_Identity(), ModelInfo(spec=GeneratorSpec(2, 8)), device="cpu", precision="fp32")


def pattern(width=40, height=30) -> np.ndarray:
    """RGB with a red top-left corner, so any rotation or flip is visible."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 2] = np.linspace(0, 255, width, dtype=np.uint8)[None]
    rgb[: height // 3, : width // 3] = (255, 0, 0)
    return rgb


def save_pil(path, array, mode=None, exif_orientation=None, **kwargs):
    picture = Image.fromarray(array)
    if mode:
        picture = picture.convert(mode)
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    picture.save(path, **kwargs)
    return path


def make_kinds(folder):
    """One file per kind users have; value: the upright size (width, height) expected back."""
    rgb = pattern()
    gray16 = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    rgba = np.dstack([rgb, np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))])
    (folder / "nested dir").mkdir()
    cv2.imwrite(str(folder / "rgb16.png"), (rgb[..., ::-1].astype(np.uint16) * 257))
    cv2.imwrite(str(folder / "rgba.png"), rgba[..., [2, 1, 0, 3]])
    cv2.imwrite(str(folder / "rgba.webp"), rgba[..., [2, 1, 0, 3]], [cv2.IMWRITE_WEBP_QUALITY, 101])
    cv2.imwrite(str(folder / "plain.bmp"), rgb[..., ::-1])
    cv2.imwrite(str(folder / "deep16.tiff"), gray16)
    save_pil(folder / "gray.jpg", rgb, mode="L")
    save_pil(folder / "print.jpg", rgb, mode="CMYK")
    save_pil(folder / "nested dir" / "rotated 6 é.jpg", rgb, exif_orientation=6)
    save_pil(folder / "nested dir" / "rotated8.png", rgb, exif_orientation=8)
    save_pil(folder / "nested dir" / "mirrored5.webp", rgb, exif_orientation=5, lossless=True)
    save_pil(folder / "tiny.png", np.zeros((3, 5, 3), np.uint8))
    return {"rgb16.png": (40, 30), "rgba.png": (40, 30), "rgba.webp": (40, 30), "plain.bmp": (40, 30),
            "deep16.tiff": (40, 30), "gray.jpg": (40, 30), "print.jpg": (40, 30),
            "nested dir/rotated 6 é.jpg": (30, 40), "nested dir/rotated8.png": (30, 40),
            "nested dir/mirrored5.webp": (30, 40), "tiny.png": (5, 3)}


def test_folder_of_every_kind_keeps_size_orientation_format_depth_and_alpha(tmp_path, tiny_model_file):
    folder = tmp_path / "photos"
    folder.mkdir()
    expected = make_kinds(folder)
    result = run_cli("apply", str(folder), "-m", str(tiny_model_file), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(str(tmp_path / "out" / name) for name in expected)
    for name, (width, height) in expected.items():
        data = (tmp_path / "out" / name).read_bytes()
        assert sniff_suffix(data) == sniff_suffix((folder / name).read_bytes()), name  # same format
        out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert out.shape[:2] == (height, width), name
    rgba = cv2.imread(str(tmp_path / "out" / "rgba.png"), cv2.IMREAD_UNCHANGED)
    assert rgba.shape[2] == 4 and np.array_equal(rgba[..., 3], cv2.imread(str(folder / "rgba.png"), -1)[..., 3])
    assert cv2.imread(str(tmp_path / "out" / "rgb16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert cv2.imread(str(tmp_path / "out" / "deep16.tiff"), cv2.IMREAD_UNCHANGED).dtype == np.uint16


@pytest.mark.parametrize("name", ["nested dir/rotated 6 é.jpg", "nested dir/rotated8.png",
                                  "nested dir/mirrored5.webp"])
def test_exif_orientation_matches_what_a_viewer_shows(tmp_path, identity, name):
    make_kinds(tmp_path)
    translate_image(tmp_path / name, tmp_path / "out.png", identity)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / name)).convert("RGB")).astype(int)
    out = cv2.imread(str(tmp_path / "out.png"))[..., ::-1].astype(int)
    assert out.shape == upright.shape
    assert np.abs(out - upright).mean() < 4


def test_sixteen_bit_is_scaled_not_clipped_and_alpha_is_not_colour(tmp_path, identity):
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16)
    deep = np.dstack([np.tile(ramp, (8, 1))] * 3)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    translate_image(tmp_path / "deep.png", tmp_path / "out.png", identity)
    out = cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.max() == 65535 and out.min() == 0
    assert np.abs(out.astype(int) - deep.astype(int)).max() <= 129  # one 8-bit step at most

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent black: alpha must not leak into colour
    rgba[4:, :, :3], rgba[4:, :, 3] = 200, 255
    cv2.imwrite(str(tmp_path / "clear.png"), rgba)
    translate_image(tmp_path / "clear.png", tmp_path / "clear_out.png", identity)
    back = cv2.imread(str(tmp_path / "clear_out.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(back[..., 3], rgba[..., 3]) and np.array_equal(back[..., :3], rgba[..., :3])
    translate_image(tmp_path / "clear.png", tmp_path / "flat.jpg", identity)  # JPEG: composited over white
    flat = cv2.imread(str(tmp_path / "flat.jpg"))
    assert flat[0, 0].min() > 240 and abs(int(flat[6, 0, 0]) - 200) < 8


def test_cmyk_jpeg_decodes_to_its_colours(tmp_path):
    path = save_pil(tmp_path / "cmyk.jpg", pattern(), mode="CMYK", quality=98)
    picture = read_image(path)
    assert np.abs(picture.rgb[2, 2].astype(int) - [255, 0, 0]).max() < 30
    assert picture.alpha is None


def test_format_flag_side_by_side_and_bytes(tmp_path, identity):
    cv2.imwrite(str(tmp_path / "a.png"), pattern()[..., ::-1])
    out = translate_image(tmp_path / "a.png", tmp_path / "a.webp", identity, ApplyOptions(side_by_side=True))
    assert cv2.imread(str(out)).shape == (30, 80, 3)
    data = translate_image_bytes((tmp_path / "a.png").read_bytes(), identity, "jpg")
    assert data[:2] == b"\xff\xd8"
    with pytest.raises(MediaError, match="not an image"):
        decode_image(b"hello", "stdin")


def test_images_refuse_existing_output_and_junk(tmp_path, identity):
    (tmp_path / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(MediaError, match="a.png"):
        translate_image(tmp_path / "a.png", tmp_path / "b.png", identity)
    assert not (tmp_path / "b.png").exists()


def test_gray_with_alpha_keeps_its_alpha(tmp_path):
    gray_alpha = Image.fromarray(np.full((6, 6, 2), 128, np.uint8), mode="LA")
    buffer = io.BytesIO()
    gray_alpha.save(buffer, "PNG")
    picture = decode_image(buffer.getvalue(), "la.png")
    assert picture.alpha is not None and picture.rgb.shape == (6, 6, 3)
    data = encode_image(picture.rgb, picture)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape == (6, 6, 4)


@pytest.mark.parametrize("out_suffix", [".jpg", ".png", ".webp"])
def test_colour_profile_and_exif_go_along_and_the_result_is_upright_once(tmp_path, identity, out_suffix):
    from PIL import ImageCms
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x0132] = 6, "TestCam", "2026:11:28 12:00:00"
    src = tmp_path / "phone.jpg"
    Image.fromarray(pattern()).save(src, exif=exif.tobytes(), icc_profile=profile, quality=95)
    dst = translate_image(src, tmp_path / f"out{out_suffix}", identity)
    out = Image.open(dst)
    assert out.info.get("icc_profile") == profile
    kept = out.getexif()
    assert kept[0x010F] == "TestCam" and kept[0x0132] == "2026:11:28 12:00:00"
    assert kept.get(0x0112, 1) == 1  # the pixels are upright now; a viewer must not turn them again
    upright = np.asarray(ImageOps.exif_transpose(Image.open(src)).convert("RGB")).astype(int)
    shown = np.asarray(ImageOps.exif_transpose(out).convert("RGB")).astype(int)
    assert shown.shape == upright.shape and np.abs(shown - upright).mean() < 4


def test_xmp_orientation_is_reset_with_the_exif_one(tmp_path, identity):
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    exif = Image.Exif()
    exif[0x0112] = 6
    src = tmp_path / "edited.png"
    buffer = cv2.imencodeWithMetadata(".png", pattern()[..., ::-1], [cv2.IMAGE_METADATA_EXIF, cv2.IMAGE_METADATA_XMP],
                                      [np.frombuffer(exif.tobytes()[6:], np.uint8), np.frombuffer(xmp, np.uint8)])[1]
    src.write_bytes(buffer.tobytes())
    dst = translate_image(src, tmp_path / "out.png", identity)
    picture = read_image(dst)
    assert picture.rgb.shape[:2] == (40, 30)  # turned once, by the source's tag, and not again
    assert b'tiff:Orientation="1"' in picture.metadata["xmp"]

"""common.py: a folder decoded once into a cache that later starts read (and that a changed folder,
another --img-size or damage makes stale), read-only folders, bad images named, data kept in host
memory giving the batches and the exact resume the device path gives, and cyclegan's augmentation
of folder data. Every dataset here is a few small images written by the test."""
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

import common
import cyclegan
import gan
from conftest import load, run_inprocess, write_image_folder

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """The user's cache folder inside the test's folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "gan-scripts"


@pytest.fixture
def decodes(monkeypatch):
    """The files decoded from now on."""
    seen, decode = [], common.decode
    monkeypatch.setattr(common, "decode", lambda path, *args: seen.append(Path(path).name) or decode(path, *args))
    return seen


def cache_files(folder):
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).is_dir() else []


# ---------------------------------------------------------------------------------------------
# 1. Decoded once, then read from the cache
# ---------------------------------------------------------------------------------------------
def test_the_cache_is_written_then_read_without_decoding(tmp_path, user_cache, decodes, capsys):
    root = write_image_folder(tmp_path / "pets", classes=("cats", "dogs"), per_class=6, size=40)
    images, labels, classes = common.folder_images(root, 32)
    assert images.shape == (12, 3, 32, 32) and images.dtype == torch.uint8 and classes == ["cats", "dogs"]
    assert labels.tolist() == [0] * 6 + [1] * 6 and len(decodes) == 12
    files = cache_files(user_cache)
    assert len(files) == 1 and files[0].startswith("pets-") and files[0].endswith(".npy") and "-32px-" in files[0]
    err = capsys.readouterr().err
    assert err == f"decoding 12 images in {root}, once: later starts read them from {user_cache / files[0]}\n"
    assert cache_files(root) == ["cats", "dogs"]   # the data folder stays as it was: ImageFolder still reads it
    assert len(torchvision.datasets.ImageFolder(str(root))) == 12
    decodes.clear()
    again, labels_again, classes_again = common.folder_images(root, 32)
    assert decodes == [] and torch.equal(again, images) and torch.equal(labels_again, labels)
    assert classes_again == classes and capsys.readouterr().err == ""   # read, not decoded: nothing to say
    # the pixels: resized as torchvision resizes, antialiased (a 40 px image to 32 px)
    with Image.open(root / "dogs" / "0.png") as picture:
        expected = center_crop(resize(pil_to_tensor(picture), 32, antialias=True), 32)
    assert torch.equal(again[6], expected)


def change_added(root):
    (root / "cats" / "new.png").write_bytes((root / "dogs" / "0.png").read_bytes())


def change_removed(root):
    (root / "cats" / "3.png").unlink()


def change_touched(root):
    path = root / "dogs" / "2.png"
    Image.new("RGB", (40, 40), (9, 99, 199)).save(path)   # same name, new pixels
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))   # and a later time, as an editor leaves it


@pytest.mark.parametrize("change", [change_added, change_removed, change_touched], ids=["added", "removed", "touched"])
def test_a_changed_folder_is_decoded_again(tmp_path, user_cache, decodes, change):
    root = write_image_folder(tmp_path / "pets", classes=("cats", "dogs"), per_class=6, size=40)
    common.folder_images(root, 32)
    change(root)
    decodes.clear()
    images, labels, _ = common.folder_images(root, 32)
    assert len(decodes) == len(images) == len(labels)
    assert len(cache_files(user_cache)) == 1   # the stale cache went
    fresh = shutil.copytree(root, root.parent / "copy")
    assert torch.equal(common.folder_images(fresh, 32)[0], images)   # what a first decode gives
    if change is change_touched:
        assert images[6 + 2, :, 16, 16].tolist() == [9, 99, 199]


def test_a_cache_from_another_decoder_is_decoded_again(tmp_path, user_cache, monkeypatch):
    """The key holds decode()'s code: images decoded by an older decoder (16-bit ones were white) are not reused."""
    root = write_image_folder(tmp_path / "pets", per_class=4, size=40)
    common.folder_images(root, 32)
    seen = []

    def newer(path, size):   # another decode(), as a later commit may bring
        seen.append(path)
        return np.zeros((3, size, size), np.uint8)
    monkeypatch.setattr(common, "decode", newer)
    assert common.folder_images(root, 32)[0].sum() == 0 and len(seen) == 8
    assert len(cache_files(user_cache)) == 1   # the older decoder's cache went


def test_another_img_size_has_its_own_cache(tmp_path, user_cache, decodes):
    root = write_image_folder(tmp_path / "pets", per_class=4, size=40)
    small = common.folder_images(root, 16)[0]
    large = common.folder_images(root, 32)[0]
    assert small.shape[-1] == 16 and large.shape[-1] == 32 and len(decodes) == 16
    decodes.clear()
    assert torch.equal(common.folder_images(root, 16)[0], small) and decodes == []   # both kept
    assert len(cache_files(user_cache)) == 2


def test_a_damaged_cache_is_decoded_again(tmp_path, user_cache, decodes, capsys):
    root = write_image_folder(tmp_path / "pets", per_class=4, size=40)
    images = common.folder_images(root, 32)[0].clone()
    array = next(user_cache.glob("*.npy"))
    with open(array, "r+b") as f:
        f.truncate(array.stat().st_size // 2)
    capsys.readouterr()
    decodes.clear()
    rebuilt = common.folder_images(root, 32)[0]
    assert len(decodes) == 8 and torch.equal(rebuilt, images)
    assert capsys.readouterr().err.startswith("decoding 8 images in ")
    decodes.clear()
    assert torch.equal(common.folder_images(root, 32)[0], images) and decodes == []   # and trusted again


def test_a_decoding_cut_short_leaves_no_cache(tmp_path, user_cache, monkeypatch):
    root = write_image_folder(tmp_path / "pets", per_class=300, size=20)
    decode, count = common.decode, []

    def stop_after_a_while(path, *args):   # as Ctrl-C would, part of the way through
        count.append(1)
        if len(count) == 200:
            raise KeyboardInterrupt
        return decode(path, *args)
    monkeypatch.setattr(common, "decode", stop_after_a_while)
    with pytest.raises(KeyboardInterrupt):
        common.folder_images(root, 16)
    assert cache_files(user_cache) == [] and len(count) < 600   # no half-written array; the rest not decoded
    monkeypatch.setattr(common, "decode", decode)
    assert common.folder_images(root, 16)[0].shape == (600, 3, 16, 16)


def test_a_ctrl_c_while_writing_the_cache_leaves_no_file(tmp_path, user_cache, monkeypatch):
    root = write_image_folder(tmp_path / "pets", per_class=4, size=20)
    save = np.save

    def interrupted(f, array):
        f.write(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        common.folder_images(root, 16)
    assert cache_files(user_cache) == []
    monkeypatch.setattr(np, "save", save)


def test_grey_images_stay_grey_and_a_colour_one_makes_all_colour(tmp_path, decodes):
    root = write_image_folder(tmp_path / "digits", classes=("a", "b"), per_class=4, size=28, mode="L")
    assert common.folder_images(root, 28)[0].shape == (8, 1, 28, 28)
    Image.new("RGB", (28, 28), (200, 10, 10)).save(root / "b" / "9.png")   # after the grey ones
    images = common.folder_images(root, 28)[0]
    assert images.shape == (9, 3, 28, 28) and images[8, :, 0, 0].tolist() == [200, 10, 10]
    grey = np.asarray(Image.open(root / "a" / "0.png"))
    assert all(np.array_equal(images[0, c].numpy(), grey) for c in range(3))


# ---------------------------------------------------------------------------------------------
# 2. Read-only folders, and bad images named
# ---------------------------------------------------------------------------------------------
def immutable(folder):
    """chattr +i: nobody, root included, can create files in folder; skips where chattr is refused."""
    result = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"chattr +i is refused here ({result.stderr.strip()}): a read-only folder cannot be made")


def test_a_read_only_data_folder_works(tmp_path, user_cache, decodes, capsys):
    root = write_image_folder(tmp_path / "pets", per_class=4, size=40)
    immutable(root)
    try:
        images = common.folder_images(root, 32)[0]
        assert len(decodes) == 8 and len(cache_files(user_cache)) == 1
        decodes.clear()
        assert torch.equal(common.folder_images(root, 32)[0], images) and decodes == []
        out = tmp_path / "run"   # and a script trains on it
        assert run_inprocess(gan.main, ["--dataset", "folder", "--data-root", root, "--img-size", "32",
                                        "--batch-size", "4", "--max-steps", "1", "--out", out]) == 0
        assert decodes == [] and load(out / "checkpoint.pt")["step"] == 1
    finally:
        subprocess.run(["chattr", "-i", str(root)], check=True)


def test_without_a_writable_cache_folder_the_images_are_decoded_at_every_start(tmp_path, decodes, capsys):
    root = write_image_folder(tmp_path / "pets", per_class=4, size=40)
    (tmp_path / "xdg").write_text("a file where the user cache folder would be")
    images = common.folder_images(root, 32)[0]
    assert images.shape == (8, 3, 32, 32) and cache_files(root) == ["cats", "dogs"]
    assert "no cache written" in capsys.readouterr().err
    assert torch.equal(common.folder_images(root, 32)[0], images) and len(decodes) == 16


@pytest.mark.parametrize("bad", ["truncated", "not an image"])
def test_an_unreadable_image_is_named_in_one_line(tmp_path, user_cache, bad, capsys):
    root = write_image_folder(tmp_path / "pets", per_class=30, size=40)
    path = root / "dogs" / "17.png"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if bad == "truncated" else b"just some text")
    assert run_inprocess(gan.main, ["--dataset", "folder", "--data-root", root, "--batch-size", "4",
                                    "--max-steps", "1", "--out", tmp_path / "run"]) == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("decoding ")]
    assert len(lines) == 1 and re.match(rf"\S+: error: {re.escape(str(path))} cannot be read \(", lines[0]), lines
    assert lines[0].endswith("replace or remove it")
    assert "truncated" in lines[0] or bad != "truncated"
    assert cache_files(user_cache) == [] and not (tmp_path / "run").exists()   # nothing left behind


def test_a_file_gone_between_listing_and_stat_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    """dogs/2.png is listed, then deleted before the stats that key the cache: the OSError's one line."""
    root = write_image_folder(tmp_path / "pets", per_class=4, size=40)
    gone, stat = root / "dogs" / "2.png", os.stat

    def listed_then_deleted(path, *args, **kwargs):
        if Path(path) == gone:
            gone.unlink(missing_ok=True)
        return stat(path, *args, **kwargs)
    monkeypatch.setattr(os, "stat", listed_then_deleted)
    assert run_inprocess(gan.main, ["--dataset", "folder", "--data-root", root, "--batch-size", "4",
                                    "--max-steps", "1", "--out", tmp_path / "run"]) == 2
    assert capsys.readouterr().err.endswith(f": error: {gone}: No such file or directory\n")
    assert not (tmp_path / "run").exists()

# ---------------------------------------------------------------------------------------------
# 3. cyclegan: the paper's crop and flip, on folder data only, seeded
# ---------------------------------------------------------------------------------------------
def pairs_folder(root, size=28):
    write_image_folder(root / "trainA", classes=(".",), per_class=16, size=size, mode="RGB", seed=1)
    write_image_folder(root / "trainB", classes=(".",), per_class=16, size=size, mode="RGB", seed=2)
    return root


@pytest.mark.parametrize("argv,expected", [(["--dataset", "folder"], True), (["--dataset", "thin2thick"], False),
                                           (["--dataset", "fake"], False),
                                           (["--dataset", "folder", "--no-augment"], False)])
def test_augmentation_is_on_for_folders_only(argv, expected):
    assert cyclegan.parse_args(argv)[0].augment is expected


def test_augment_flips_half_the_images_and_is_seeded():
    images = torch.rand(200, 3, 4, 4) * 2 - 1   # 4 px: 286/256 of it is still 4, so no crop, only flips
    torch.manual_seed(0)
    out = cyclegan.augment(images, 4)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept)) and 70 < sum(flipped) < 130
    torch.manual_seed(0)
    assert torch.equal(cyclegan.augment(images, 4), out)


def test_augment_crops_a_random_window_of_the_enlarged_image():
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    torch.manual_seed(1)
    out = cyclegan.augment(image.expand(16, -1, -1, -1), 64)
    enlarged = F.interpolate(image, size=(71, 71), mode="bilinear")[0]   # 64 * 286 // 256
    windows = {(top, left, flip) for top in range(8) for left in range(8) for flip in (False, True)}
    found = []
    for o in out:
        match = [(t, l, f) for t, l, f in windows
                 if torch.equal(o, (lambda w: w.flip(-1) if f else w)(enlarged[:, t:t + 64, l:l + 64]))]
        assert len(match) == 1
        found += match
    assert len(set(found)) > 8   # the crops and flips differ from image to image


def test_folder_batches_are_augmented_and_fake_ones_are_not(tmp_path):
    root = pairs_folder(tmp_path / "pairs")
    for argv, changed in ((["--dataset", "folder", "--data-root", str(root)], True), (["--dataset", "fake"], False)):
        args = cyclegan.parse_args(argv)[0]
        data = cyclegan.load_unpaired(args, CPU)
        raw_a, _ = next(data.a.batches(8, 0, args.seed))
        a, b = next(data.batches(8, 0, args.seed))
        assert a.shape == raw_a.shape == (8, data.shape[0], 28, 28)
        assert torch.equal(a, raw_a) is not changed


def test_resume_is_exact_with_augmentation(tmp_path):
    root = pairs_folder(tmp_path / "pairs")
    flags = ["--dataset", "folder", "--data-root", root, "--width", "4", "--blocks", "1", "--img-size", "16", "--batch-size", "4",
             "--epochs", "2", "--log-every", "100"]
    assert run_inprocess(cyclegan.main, flags + ["--out", tmp_path / "whole"]) == 0
    assert run_inprocess(cyclegan.main, flags + ["--out", tmp_path / "parts", "--max-steps", "3"]) == 0
    assert run_inprocess(cyclegan.main, ["--resume", tmp_path / "parts" / "checkpoint.pt"]) == 0
    whole, parts = load(tmp_path / "whole" / "checkpoint.pt"), load(tmp_path / "parts" / "checkpoint.pt")
    assert whole["step"] == parts["step"] == 8 and whole["args"]["augment"] is True
    for name, tensor in whole["sampler"].items():
        assert torch.equal(tensor, parts["sampler"][name]), name
    assert run_inprocess(cyclegan.main, flags + ["--out", tmp_path / "plain", "--no-augment"]) == 0
    plain = load(tmp_path / "plain" / "checkpoint.pt")["sampler"]
    assert not all(torch.equal(tensor, plain[name]) for name, tensor in whole["sampler"].items())


def test_generate_without_test_folders_says_it_translates_training_images(tmp_path, capsys):
    root = pairs_folder(tmp_path / "pairs")
    out = tmp_path / "run"
    assert run_inprocess(cyclegan.main, ["--dataset", "folder", "--data-root", root, "--width", "4", "--blocks", "1",
                                         "--batch-size", "8", "--max-steps", "1", "--out", out]) == 0
    capsys.readouterr()
    assert run_inprocess(cyclegan.main, ["--generate", "4", "--resume", out / "checkpoint.pt"]) == 0
    printed = capsys.readouterr().out
    assert f"{root} has no testA/ and testB/: translating the training images of trainA/ and trainB/" in printed
    assert "translating the first 4 training images of each set" in printed and "test images" not in printed

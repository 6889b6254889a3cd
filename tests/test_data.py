"""imagedata.py: a folder decoded once into a cache that later starts read (and that a changed folder,
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

import cyclegan
import gan
import imagedata
from conftest import load, run_inprocess, run_subprocess, write_image_folder

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """The user's cache folder (read-only data) inside the test's folder, and the default device budget."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("GAN_DEVICE_DATA_BUDGET_MB", raising=False)
    return tmp_path / "xdg" / "gan-scripts"


@pytest.fixture
def decodes(monkeypatch):
    """The files decoded from now on, in the order their decoding started."""
    seen, read = [], imagedata._read
    monkeypatch.setattr(imagedata, "_read", lambda path, *args: seen.append(Path(path).name) or read(path, *args))
    return seen


def same_training(first, second):
    """Two checkpoints with equal step, networks, moving average and optimiser moments, bit for bit."""
    def equal(a, b):
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
        return torch.equal(a, b) if torch.is_tensor(a) else a == b
    return all(equal(first[k], second[k]) for k in ("step", "generator", "discriminator", "ema", "opt_g", "opt_d"))


def cache_files(folder):
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).is_dir() else []


# ---------------------------------------------------------------------------------------------
# 1. Decoded once, then read from the cache
# ---------------------------------------------------------------------------------------------
def test_the_cache_is_written_then_read_without_decoding(tmp_path, user_cache, decodes, capsys):
    root = write_image_folder(tmp_path / "pets", classes=("cats", "dogs"), per_class=6, size=40)
    images, labels, classes = imagedata.folder_images(root, 32)
    assert images.shape == (12, 3, 32, 32) and images.dtype == torch.uint8 and classes == ["cats", "dogs"]
    assert labels.tolist() == [0] * 6 + [1] * 6 and len(decodes) == 12
    files = cache_files(user_cache)
    assert len(files) == 2 and files[0].startswith("pets-") and {Path(f).suffix for f in files} == {".json", ".npy"}
    err = capsys.readouterr().err
    assert f"decoded and cached in {user_cache / files[1]}" in err and "MB)" in err
    assert f"delete {user_cache / files[1]} and .json to free the space" in err
    assert not (root / ".gan-cache").exists()   # the data folder stays as it was: ImageFolder still reads it
    assert len(torchvision.datasets.ImageFolder(str(root))) == 12
    decodes.clear()
    again, labels_again, classes_again = imagedata.folder_images(root, 32)
    assert decodes == [] and torch.equal(again, images) and torch.equal(labels_again, labels)
    assert classes_again == classes and "from the cache" in capsys.readouterr().err
    # the pixels: resized as torchvision resizes, antialiased (a 40 px image to 32 px), as before the cache
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
    imagedata.folder_images(root, 32)
    change(root)
    decodes.clear()
    images, labels, _ = imagedata.folder_images(root, 32)
    assert len(decodes) == len(images) == len(labels)
    assert len(cache_files(user_cache)) == 2   # the stale cache went
    fresh = shutil.copytree(root, root.parent / "copy")
    assert torch.equal(imagedata.folder_images(fresh, 32)[0], images)   # what a first decode gives
    if change is change_touched:
        assert images[6 + 2, :, 16, 16].tolist() == [9, 99, 199]


def test_another_img_size_has_its_own_cache(tmp_path, user_cache, decodes):
    root = write_image_folder(tmp_path / "pets", per_class=4, size=40)
    small = imagedata.folder_images(root, 16)[0]
    large = imagedata.folder_images(root, 32)[0]
    assert small.shape[-1] == 16 and large.shape[-1] == 32 and len(decodes) == 16
    decodes.clear()
    assert torch.equal(imagedata.folder_images(root, 16)[0], small) and decodes == []   # both kept
    assert len(cache_files(user_cache)) == 4


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "index"])
def test_a_damaged_cache_is_rebuilt(tmp_path, user_cache, decodes, capsys, damage):
    root = write_image_folder(tmp_path / "pets", per_class=4, size=40)
    images = imagedata.folder_images(root, 32)[0].clone()
    array = next(user_cache.glob("*.npy"))
    if damage == "truncated":
        with open(array, "r+b") as f:
            f.truncate(array.stat().st_size // 2)
    elif damage == "zeroed":   # the right size, the wrong bytes
        size = array.stat().st_size
        with open(array, "r+b") as f:
            f.seek(128)
            f.write(bytes(size - 128))
    else:
        index = array.with_suffix(".json")
        index.write_text(index.read_text().replace('"channels": 3', '"channels": 1'))
    capsys.readouterr()
    decodes.clear()
    rebuilt = imagedata.folder_images(root, 32)[0]
    assert len(decodes) == 8 and torch.equal(rebuilt, images)
    assert "is damaged or incomplete: decoding the images again" in capsys.readouterr().err
    decodes.clear()
    assert torch.equal(imagedata.folder_images(root, 32)[0], images) and decodes == []   # and trusted again


def test_a_decoding_cut_short_leaves_no_cache(tmp_path, user_cache, monkeypatch):
    root = write_image_folder(tmp_path / "pets", per_class=300, size=20)
    read, count = imagedata._read, []

    def stop_after_a_while(path, *args):   # as Ctrl-C would, part of the way through
        count.append(1)
        if len(count) == 200:
            raise KeyboardInterrupt
        return read(path, *args)
    monkeypatch.setattr(imagedata, "_read", stop_after_a_while)
    with pytest.raises(KeyboardInterrupt):
        imagedata.folder_images(root, 16)
    assert cache_files(user_cache) == []   # no index, no half-written array
    monkeypatch.setattr(imagedata, "_read", read)
    assert imagedata.folder_images(root, 16)[0].shape == (600, 3, 16, 16)


def test_progress_is_shown_while_decoding(tmp_path, monkeypatch, capsys):
    root = write_image_folder(tmp_path / "pets", per_class=300, size=20)
    clock = iter(range(0, 10**6, 3))   # each look at the clock: 3 s later
    monkeypatch.setattr(imagedata.time, "monotonic", lambda: next(clock))
    imagedata.folder_images(root, 16)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("decoding")]
    assert lines and all(f"decoding {root}: " in line and " of 600 images, " in line and " img/s, " in line
                         and line.endswith(" left") for line in lines), lines


def test_grey_images_stay_grey_and_a_colour_one_makes_all_colour(tmp_path, decodes, capsys):
    root = write_image_folder(tmp_path / "digits", classes=("a", "b"), per_class=4, size=28, mode="L")
    assert imagedata.folder_images(root, 28)[0].shape == (8, 1, 28, 28)
    Image.new("RGB", (28, 28), (200, 10, 10)).save(root / "b" / "9.png")   # after the grey ones
    images = imagedata.folder_images(root, 28)[0]
    assert images.shape == (9, 3, 28, 28) and images[8, :, 0, 0].tolist() == [200, 10, 10]
    grey = np.asarray(Image.open(root / "a" / "0.png"))
    assert all(np.array_equal(images[0, c].numpy(), grey) for c in range(3))
    assert "colour images among grey ones: decoding again in colour" in capsys.readouterr().err


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
        images = imagedata.folder_images(root, 32)[0]
        assert not (root / ".gan-cache").exists() and len(decodes) == 8
        files = cache_files(user_cache)
        assert len(files) == 2 and files[0].startswith("pets-") and "-32px-" in files[0]
        decodes.clear()
        assert torch.equal(imagedata.folder_images(root, 32)[0], images) and decodes == []
        out = tmp_path / "run"   # and a script trains on it
        assert run_inprocess(gan.main, ["--dataset", "folder", "--data-root", root, "--img-size", "32",
                                        "--batch-size", "4", "--max-steps", "1", "--out", out]) == 0
        assert decodes == [] and load(out / "checkpoint.pt")["step"] == 1
    finally:
        subprocess.run(["chattr", "-i", str(root)], check=True)


def test_without_a_user_cache_the_cache_goes_into_the_data_folder(tmp_path, decodes, capsys):
    root = write_image_folder(tmp_path / "pets", per_class=4, size=40)
    (tmp_path / "xdg").write_text("a file where the user cache folder would be")
    images = imagedata.folder_images(root, 32)[0]
    files = cache_files(root / ".gan-cache")
    assert len(files) == 2 and files[0].startswith("32px-") and len(decodes) == 8
    assert f"delete {root / '.gan-cache'} to free the space" in capsys.readouterr().err
    decodes.clear()
    assert torch.equal(imagedata.folder_images(root, 32)[0], images) and decodes == []


def test_without_any_writable_cache_folder_the_images_are_decoded_in_memory(tmp_path, capsys):
    root = write_image_folder(tmp_path / "pets", per_class=4, size=40)
    (tmp_path / "xdg").write_text("a file where the user cache folder would be")
    immutable(root)
    try:
        images = imagedata.folder_images(root, 32)[0]
        assert images.shape == (8, 3, 32, 32) and not (root / ".gan-cache").exists()
        assert "no cache could be written" in capsys.readouterr().err
    finally:
        subprocess.run(["chattr", "-i", str(root)], check=True)


@pytest.mark.parametrize("bad", ["truncated", "not an image"])
def test_an_unreadable_image_is_named_in_one_line(tmp_path, user_cache, bad):
    root = write_image_folder(tmp_path / "pets", per_class=30, size=40)
    path = root / "dogs" / "17.png"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if bad == "truncated" else b"just some text")
    result = run_subprocess("gan.py", "--dataset", "folder", "--data-root", root, "--batch-size", "4",
                            "--max-steps", "1", "--out", tmp_path / "run")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"gan.py: error: {path} cannot be read (") and lines[0].endswith("replace or remove it")
    assert "truncated" in lines[0] or bad != "truncated"
    assert cache_files(user_cache) == [] and not (tmp_path / "run").exists()   # nothing left behind


# ---------------------------------------------------------------------------------------------
# 3. Data kept in host memory: the same batches, the same exact resume
# ---------------------------------------------------------------------------------------------
def test_a_file_gone_between_listing_and_stat_is_named_in_one_line(tmp_path, monkeypatch):
    """dogs/2.png is listed, then deleted before the stats that key the cache."""
    root = write_image_folder(tmp_path / "pets", per_class=4, size=40)
    gone, list_names = root / "dogs" / "2.png", imagedata._image_names

    def listed_then_deleted(folder):
        names = list_names(folder)
        if folder == gone.parent:
            gone.unlink()
        return names
    monkeypatch.setattr(imagedata, "_image_names", listed_then_deleted)
    with pytest.raises(imagedata.UserError, match=re.escape(f"{gone} cannot be read")):
        imagedata.folder_images(root, 32)


def test_host_memory_batches_are_bit_identical_to_device_batches(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "pets", classes=("cats", "dogs", "owls"), per_class=11, size=20)
    images, labels, classes = imagedata.folder_images(root, 16)
    on_device = imagedata.ImageData(images, labels, classes, CPU)
    monkeypatch.setenv("GAN_DEVICE_DATA_BUDGET_MB", "0")
    on_host = imagedata.ImageData(images, labels, classes, CPU)
    assert not on_device.on_host and on_host.on_host and "in host memory" in str(on_host)
    for epoch, seed, skip in [(0, 0, 0), (1, 0, 0), (3, 7, 2)]:
        pairs = zip(on_device.batches(5, epoch, seed, skip), on_host.batches(5, epoch, seed, skip), strict=True)
        for (x, y), (x_host, y_host) in pairs:
            assert torch.equal(x, x_host) and torch.equal(y, y_host)
    # the order is today's: the permutation of (seed, epoch)
    order = torch.randperm(33, generator=torch.Generator().manual_seed(7 * 100_003 + 3))
    first = next(on_host.batches(5, epoch=3, seed=7))[1]
    assert torch.equal(first, labels[order[:5]])


def test_the_device_budget_comes_from_the_environment(monkeypatch):
    assert imagedata.device_budget(CPU) == float("inf")   # on the CPU the data is host memory anyway
    monkeypatch.setenv("GAN_DEVICE_DATA_BUDGET_MB", "2")
    assert imagedata.device_budget(CPU) == 2 * 2**20
    monkeypatch.setenv("GAN_DEVICE_DATA_BUDGET_MB", "lots")
    with pytest.raises(imagedata.UserError, match="GAN_DEVICE_DATA_BUDGET_MB='lots' is not a number"):
        imagedata.device_budget(CPU)


def test_resume_is_exact_on_the_host_path(tmp_path, monkeypatch, capsys):
    root = write_image_folder(tmp_path / "pets", classes=("cats", "dogs"), per_class=20, size=28, mode="L")
    monkeypatch.setenv("GAN_DEVICE_DATA_BUDGET_MB", "0")
    flags = ["--dataset", "folder", "--data-root", root, "--batch-size", "8", "--epochs", "2", "--log-every", "1",
             "--label-smoothing", "0.1"]
    assert run_inprocess(gan.main, flags + ["--out", tmp_path / "whole"]) == 0
    assert "in host memory" in capsys.readouterr().out
    assert run_inprocess(gan.main, flags + ["--out", tmp_path / "parts", "--max-steps", "3"]) == 0
    assert run_inprocess(gan.main, ["--resume", tmp_path / "parts" / "checkpoint.pt"]) == 0
    whole, parts = load(tmp_path / "whole" / "checkpoint.pt"), load(tmp_path / "parts" / "checkpoint.pt")
    assert whole["step"] == parts["step"] == 10 and same_training(whole, parts)
    # and the host path trained exactly as the device path does
    monkeypatch.delenv("GAN_DEVICE_DATA_BUDGET_MB")
    assert run_inprocess(gan.main, flags + ["--out", tmp_path / "device"]) == 0
    assert same_training(load(tmp_path / "device" / "checkpoint.pt"), whole)


# ---------------------------------------------------------------------------------------------
# 4. cyclegan: the paper's crop and flip, on folder data only, seeded
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
    flags = ["--dataset", "folder", "--data-root", root, "--width", "4", "--blocks", "1", "--batch-size", "4",
             "--epochs", "2", "--log-every", "100"]
    assert run_inprocess(cyclegan.main, flags + ["--out", tmp_path / "whole"]) == 0
    assert run_inprocess(cyclegan.main, flags + ["--out", tmp_path / "parts", "--max-steps", "3"]) == 0
    assert run_inprocess(cyclegan.main, ["--resume", tmp_path / "parts" / "checkpoint.pt"]) == 0
    whole, parts = load(tmp_path / "whole" / "checkpoint.pt"), load(tmp_path / "parts" / "checkpoint.pt")
    assert whole["step"] == parts["step"] == 8 and whole["args"]["augment"] is True
    for name, tensor in whole["translator"].items():
        assert torch.equal(tensor, parts["translator"][name]), name
    assert run_inprocess(cyclegan.main, flags + ["--out", tmp_path / "plain", "--no-augment"]) == 0
    plain = load(tmp_path / "plain" / "checkpoint.pt")["translator"]
    assert not all(torch.equal(tensor, plain[name]) for name, tensor in whole["translator"].items())


def test_generate_without_test_folders_says_it_translates_training_images(tmp_path, capsys):
    root = pairs_folder(tmp_path / "pairs")
    out = tmp_path / "run"
    assert run_inprocess(cyclegan.main, ["--dataset", "folder", "--data-root", root, "--width", "4", "--blocks", "1",
                                         "--batch-size", "8", "--max-steps", "1", "--out", out]) == 0
    capsys.readouterr()
    assert run_inprocess(cyclegan.main, ["--generate", "4", "--resume", out / "checkpoint.pt"]) == 0
    printed = capsys.readouterr().out
    assert f"{root} has no testA/ and testB/: translating the training images of trainA/ and trainB/" in printed
    assert "wrote 4 training images of each set" in printed and "test images" not in printed

"""What a new user met on a fresh clone, each replayed: data that changed under a run, a run moved to another
folder or machine, --lr alone, 16-bit and transparent images, a second Ctrl-C while the checkpoint is written,
--no-compile, --device cpu:0, the hint when nothing is left to train, --out . and ~, .gif and .tif files (and
evaluate.py's floor, in test_evaluate.py); and the general handler: an OSError, memory refused, a folder or a .npy given for a .pt."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import common
import evaluate
import gan
from conftest import load, run_inprocess, to_uint8, write_idx_dataset, write_image_folder

FAKE = ["--dataset", "fake", "--log-every", "1"]


def folder_run(root, out, *flags):
    return ["--dataset", "folder", "--data-root", root, "--img-size", "16", "--batch-size", "16", "--out", out,
            *map(str, flags)]


def files(out):
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "lock"}


def test_a_resume_on_data_that_grew_or_shrank_is_refused_naming_both_counts(tmp_path, capsys):
    """80 images, then 160 (or 40): the epochs of the run would not add up, so nothing is trained or changed."""
    root, out = write_image_folder(tmp_path / "images", per_class=40), tmp_path / "run"
    assert run_inprocess(gan.main, folder_run(root, out, "--epochs", "2")) == 0
    before = files(out)
    for per_class, count in ((80, "160"), (20, "40")):
        shutil.rmtree(root)
        write_image_folder(root, per_class=per_class, seed=1)
        capsys.readouterr()
        assert run_inprocess(gan.main, ["--resume", out, "--epochs", "3"]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]   # after the line saying the folder is decoded
        assert error.endswith(f"error: the data is {count} images, 2 classes, 3 channel(s), 16 px; the run trained "
                              "on 80 images, 2 classes, 3 channel(s), 16 px")
        assert files(out) == before


def test_a_run_moves_between_folders_and_its_data_root_may_change(tmp_path, monkeypatch, capsys):
    """The run keeps its data root as a whole path: resumed from another working folder it finds the data with no
    flag; with the data moved, --data-root names the new place."""
    (tmp_path / "project").mkdir()
    write_idx_dataset(tmp_path / "project" / "data" / "MNIST", n_train=128)
    monkeypatch.chdir(tmp_path / "project")
    assert run_inprocess(gan.main, ["--epochs", "1", "--out", "runs/gan"]) == 0   # the default data/, relative
    assert load("runs/gan/checkpoint.pt")["args"]["data_root"] == str(tmp_path / "project" / "data")
    monkeypatch.chdir(tmp_path)
    assert run_inprocess(gan.main, ["--resume", "project/runs/gan", "--epochs", "2"]) == 0
    assert load("project/runs/gan/checkpoint.pt")["step"] == 4
    (tmp_path / "project" / "data").rename(tmp_path / "moved")
    capsys.readouterr()
    assert run_inprocess(gan.main, ["--resume", "project/runs/gan", "--epochs", "3"]) == 2
    assert capsys.readouterr().err.endswith(f"error: the run's data was in {tmp_path / 'project' / 'data'}, which is "
                                            "gone: if it moved, give --data-root DIR\n")
    assert run_inprocess(gan.main, ["--resume", "project/runs/gan", "--epochs", "3", "--data-root", "moved"]) == 0
    assert load("project/runs/gan/checkpoint.pt")["args"]["data_root"] == str(tmp_path / "moved")


@pytest.mark.parametrize("module", ["gan", "cgan", "wgan", "wgan_gp", "dcgan"])
def test_lr_alone_sets_both_rates_as_help_says(module, capsys):
    """A user of other GAN code passes one --lr and means both networks' rate; --lr-d still sets D's own."""
    module = __import__(module)
    default = module.parse_args(["--dataset", "fake"])[0]
    assert default.lr_d != default.lr   # these scripts' defaults give D a rate of its own
    for lr, flags, expected in ((3e-4, ["--lr", "3e-4"], 3e-4), (3e-4, ["--lr", "3e-4", "--lr-d", "1e-4"], 1e-4),
                                (default.lr, ["--lr", str(default.lr)], default.lr)):   # typed at its default too
        args = module.parse_args(["--dataset", "fake", *flags])[0]
        nets = module.build(args, (1, 32, 32), 10, torch.device("cpu"))
        assert args.lr == lr and [opt.param_groups[0]["lr"] for opt in nets if hasattr(opt, "param_groups")] == [
            lr, expected]
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"and of D's without --lr-d (default: {default.lr})" in text and f"else {default.lr_d})" in text


def test_every_image_mode_pil_opens_decodes_to_its_8_bit_image(tmp_path):
    """16-bit PNGs were white; float TIFFs black; transparent pixels kept whatever colour hid under them."""
    grey, size = np.full((8, 8), 128 * 257, np.uint16), 8
    Image.fromarray(grey).save(tmp_path / "16bit.png")                                      # I;16
    Image.fromarray(grey.astype(np.int32)).save(tmp_path / "32bit.tif")                     # I
    Image.fromarray(np.full((8, 8), 0.25, np.float32)).save(tmp_path / "float.tif")         # F: 0 to 1
    Image.fromarray(np.dstack([np.full((8, 8), 100, np.uint8), np.zeros((8, 8), np.uint8)]), "LA").save(
        tmp_path / "clear.png")                                                             # all transparent
    Image.fromarray(np.dstack([np.full((8, 8), 100, np.uint8), np.full((8, 8), 255, np.uint8)]), "LA").save(
        tmp_path / "opaque.png")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.save(tmp_path / "palette.png", transparency=1)                                 # P, index 1 clear
    Image.fromarray(np.full((8, 8), 200, np.int32)).save(tmp_path / "8bit-in-32.tif")       # I, 0 to 255
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)    # red
    sideways = Image.new("L", (16, 8), 0)
    sideways.paste(255, (0, 0, 8, 8))   # a phone's photo, stored on its side: left half white
    exif = sideways.getexif()
    exif[0x0112] = 6   # "rotate 90 degrees clockwise to view"
    sideways.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    expected = {"16bit.png": (128,) * 3, "32bit.tif": (128,) * 3, "float.tif": (64,) * 3, "clear.png": (255,) * 3,
                "opaque.png": (100,) * 3, "palette.png": (255,) * 3, "cmyk.jpg": (255, 0, 0),
                "8bit-in-32.tif": (200,) * 3}
    for name, rgb in expected.items():
        pixels = common.decode(tmp_path / name, size)
        assert pixels.shape == (3, size, size) and pixels.dtype == np.uint8
        assert np.abs(pixels.reshape(3, -1).astype(int) - np.array(rgb)[:, None]).max() <= 1, (name, pixels[:, 0, 0])
    upright = common.decode(tmp_path / "phone.jpg", 8)[0]   # as a viewer shows it: 8 wide, 16 high, top half white
    assert upright.shape == (8, 8) and upright[:2].min() > 200 and upright[-2:].max() < 50, upright


def test_a_second_ctrl_c_while_the_checkpoint_is_written_exits_130_and_keeps_it_whole(tmp_path, monkeypatch, capsys):
    """torch.save turns a KeyboardInterrupt raised mid-write into a RuntimeError of its own ("unexpected pos")."""
    out = tmp_path / "run"
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "1", "--out", out]) == 0
    save = torch.save

    class Interrupted:   # the file torch.save writes to, with a Ctrl-C arriving at its third write
        def __init__(self, file):
            self.file, self.writes = file, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise KeyboardInterrupt
            return self.file.write(data)

        def flush(self):
            self.file.flush()

    monkeypatch.setattr(torch, "save", lambda obj, f: save(obj, Interrupted(f) if "checkpoint" in f.name else f))
    capsys.readouterr()
    assert run_inprocess(gan.main, ["--resume", out, "--max-steps", "2"]) == 130
    err = capsys.readouterr().err
    assert err.strip().endswith(": interrupted; the last checkpoint, if any, is kept") and err.strip().count("\n") == 0
    assert load(out / "checkpoint.pt")["step"] == 1 and not list(out.glob("*.tmp"))


def test_a_run_begun_with_compile_goes_on_without_it(tmp_path):
    out = tmp_path / "run"
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "1", "--out", out]) == 0
    checkpoint = load(out / "checkpoint.pt")
    checkpoint["args"]["compile"] = True   # as --compile wrote it (compiling here would take a minute)
    torch.save(checkpoint, out / "checkpoint.pt")
    assert gan.parse_args(["--resume", str(out)])[0].compile is True
    assert gan.parse_args(["--resume", str(out), "--no-compile"])[0].compile is False
    assert run_inprocess(gan.main, ["--resume", out, "--no-compile", "--max-steps", "2"]) == 0
    assert load(out / "checkpoint.pt")["args"]["compile"] is False


@pytest.mark.parametrize("name", ["cpu", "cpu:0"])
def test_every_cpu_spelling_torch_accepts_trains(name, tmp_path):
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "1", "--device", name, "--out", tmp_path / "run"]) == 0
    assert load(tmp_path / "run" / "checkpoint.pt")["step"] == 1 and common.pick_device(name) == torch.device("cpu")


def test_nothing_left_to_train_names_the_epochs_that_go_on(tmp_path, capsys):
    """A larger --max-steps cannot pass --epochs: the hint names the --epochs that trains on, and it works."""
    out = tmp_path / "run"
    assert run_inprocess(gan.main, [*FAKE, "--epochs", "1", "--out", out]) == 0   # 8 steps of 64
    for flags in (["--epochs", "1"], ["--max-steps", "20"], ["--epochs", "1", "--max-steps", "3"]):
        capsys.readouterr()
        assert run_inprocess(gan.main, ["--resume", out, *flags]) == 0
        printed = capsys.readouterr().out
        assert f"nothing left to train at step 8: go on with python gan.py --resume {out / 'checkpoint.pt'} " \
               "--epochs 2 or more" in printed and "--max-steps" not in printed
    assert run_inprocess(gan.main, ["--resume", out, "--epochs", "2"]) == 0
    assert load(out / "checkpoint.pt")["step"] == 16
    capsys.readouterr()   # a --max-steps it has passed: that is what ends it
    assert run_inprocess(gan.main, ["--resume", out, "--epochs", "5", "--max-steps", "10"]) == 0
    assert capsys.readouterr().out.strip().endswith("--max-steps 17 or more, or without --max-steps")


def test_out_names_a_folder_inside_the_current_one_or_in_home(tmp_path, monkeypatch, capsys):
    """--out . and --out '' once took ../proj-2; a quoted ~ made a folder named ~."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path / "proj")
    for out in (".", "", "./"):
        capsys.readouterr()
        assert run_inprocess(gan.main, [*FAKE, "--max-steps", "1", "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "names no folder of its own" in err
    assert sorted(os.listdir(tmp_path)) == ["proj"] and os.listdir(".") == ["notes.txt"]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USERPROFILE", str(tmp_path / "home"))   # Windows' home
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "1", "--out", "~/runs/x"]) == 0
    assert (tmp_path / "home" / "runs" / "x" / "checkpoint.pt").is_file() and not (tmp_path / "proj" / "~").exists()


def test_gif_and_tif_images_count_like_png(tmp_path):
    """A folder of 39 images reported 9: .gif and .tif were skipped without a word."""
    root = write_image_folder(tmp_path / "images", per_class=3)
    for folder in root.iterdir():
        for i, suffix in enumerate((".gif", ".tif", ".tiff", ".ppm")):
            Image.open(folder / "0.png").save(folder / f"extra{i}{suffix}")
    (root / "cats" / "notes.txt").write_text("not an image")
    images, labels, classes = common.folder_images(root, 16)
    assert len(images) == 14 and labels.tolist() == [0] * 7 + [1] * 7 and classes == ["cats", "dogs"]


# ---------------------------------------------------------------------------------------------
# The general handler, and checkpoints named as users name them
# ---------------------------------------------------------------------------------------------
def test_an_oserror_is_one_line_naming_its_file_and_a_full_disk_keeps_the_last_checkpoint(tmp_path, monkeypatch,
                                                                                          capsys):
    out = tmp_path / "run"
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "1", "--out", out]) == 0
    save = torch.save

    def full_disk(obj, f):
        save(obj, f)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    capsys.readouterr()
    assert run_inprocess(gan.main, ["--resume", out, "--max-steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("error: [Errno 28] No space left on device\n")
    assert load(out / "checkpoint.pt")["step"] == 1 and not list(out.glob("*.tmp"))
    monkeypatch.undo()
    assert run_inprocess(gan.main, ["--resume", tmp_path / "nowhere" / "checkpoint.pt"]) == 2
    assert capsys.readouterr().err.endswith(f"error: {tmp_path / 'nowhere' / 'checkpoint.pt'}: No such file or "
                                            "directory\n")


def test_memory_refused_is_one_whole_line(tmp_path, monkeypatch, capsys):
    def refused(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: not enough memory: you "
                           "tried to allocate 4000000000000 bytes. can't allocate memory")

    monkeypatch.setattr(gan, "train_step", refused)
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "1", "--out", tmp_path / "run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("where the script has them smaller\n") and "Allo" not in err


def test_a_run_folder_means_its_checkpoint_and_a_wrong_file_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "1", "--out", out]) == 0
    assert gan.load_generator(out)(torch.randn(2, 100)).shape == (2, 1, 28, 28)
    np.save(tmp_path / "samples.npy", to_uint8(torch.zeros(2, 1, 8, 8)))
    with pytest.raises(common.UserError, match=r"samples\.npy is not a whole checkpoint .*: give a \.pt file"):
        gan.load_generator(tmp_path / "samples.npy")
    assert run_inprocess(evaluate.main, [tmp_path / "samples.npy"]) == 2
    assert "samples.npy: a .npy file; give a run folder, a .pt checkpoint or an .npz of samples" in \
        capsys.readouterr().err


def test_a_snapshot_is_never_resumed_whatever_its_name(tmp_path, capsys):
    """A generator snapshot holds no D, no optimisers, no step: resumed as it is, or copied as checkpoint.pt."""
    out, copy = tmp_path / "run", tmp_path / "copy"
    assert run_inprocess(gan.main, [*FAKE, "--epochs", "1", "--out", out]) == 0
    copy.mkdir()
    (copy / "checkpoint.pt").write_bytes((out / "generator_epoch_001.pt").read_bytes())
    for path in (out / "generator_epoch_001.pt", copy / "checkpoint.pt"):
        capsys.readouterr()
        assert run_inprocess(gan.main, ["--resume", path, "--epochs", "2"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"error: {path} cannot be resumed, a run's checkpoint.pt can" in err
    assert run_inprocess(gan.main, ["--generate", "3", "--resume", copy]) == 0   # what a snapshot is for

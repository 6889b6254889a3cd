"""The block a reader copies: in every script, the lines from the first network definition to the end of
train_step run when pasted alone into a fresh project with only the script's imports (never common.py),
and train_step takes its settings as named arguments with the script's own defaults."""
import ast
import builtins
import inspect
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, write_image_folder

SCRIPTS = ("gan", "cgan", "acgan", "wgan", "wgan_gp", "dcgan", "cyclegan")


def block_of(script):
    """(the block's source: from the first definition under the "# Networks" banner to the end of
    train_step; the import statements of the script but common's; the names they bind)."""
    source = (ROOT / f"{script}.py").read_text()
    body = ast.parse(source).body
    lines = source.splitlines()
    banner = next(i for i, line in enumerate(lines, 1) if line.startswith("# Networks"))
    first = next(node for node in body if node.lineno > banner)
    last = next(node for node in body if getattr(node, "name", None) == "train_step")
    block = "\n".join(lines[first.lineno - 1:last.end_lineno])
    imports = [node for node in body if isinstance(node, (ast.Import, ast.ImportFrom))]
    imports = [node for node in imports if all(alias.name != "common" for alias in node.names)]
    bound = {(alias.asname or alias.name).split(".")[0] for node in imports for alias in node.names}
    return block, "\n".join(ast.unparse(node) for node in imports), bound


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_block_names_nothing_from_outside_it(script):
    block, _, imported = block_of(script)
    tree = ast.parse(block)
    defined = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    defined |= {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}
    defined |= {arg.arg for node in ast.walk(tree) if isinstance(node, ast.arguments)
                for arg in [*node.posonlyargs, *node.args, *node.kwonlyargs, node.vararg, node.kwarg] if arg}
    defined |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    outside = used - defined - imported - set(dir(builtins))
    assert not outside, f"{script}'s block uses {sorted(outside)} from outside it"
    assert "common" not in used and "args" not in used


@pytest.mark.parametrize("script", SCRIPTS)
def test_train_step_takes_its_settings_by_name_with_the_scripts_defaults(script):
    module = __import__(script)
    parameters = inspect.signature(module.train_step).parameters.values()
    settings = {p.name: p.default for p in parameters if p.kind == p.KEYWORD_ONLY}
    assert settings and "args" not in settings
    flags = module.parse_args([])[0]
    for name, default in settings.items():   # a pasted block trains as the script does at its defaults
        assert getattr(flags, name) == default, (script, name)


def build_and_step(namespace, script):
    """The script's networks at small sizes, built from the pasted block alone; two train_steps on random data.
    Returns (the logged values of the last step, the weights of G before, G)."""
    ns = namespace
    images32, images28 = torch.rand(16, 1, 32, 32) * 2 - 1, torch.rand(16, 1, 28, 28) * 2 - 1
    labels = torch.arange(16) % 10

    def adam(net):
        return torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))
    if script == "cyclegan":
        translator = ns["Translator"](1, 4, 1)
        d_a, d_b = ns["Discriminator"](1, 4, 2), ns["Discriminator"](1, 4, 2)
        pools = ns["ImagePool"](50, (1, 28, 28)), ns["ImagePool"](50, (1, 28, 28))
        opt_d = torch.optim.Adam([*d_a.parameters(), *d_b.parameters()], lr=2e-4)
        before = [p.detach().clone() for p in translator.parameters()]
        for _ in range(2):
            logged = ns["train_step"](images28, images28.flip(-1), translator, d_a, d_b, *pools, adam(translator), opt_d)
        return logged, before, translator
    shape = (1, 32, 32) if script in ("acgan", "dcgan") else (1, 28, 28)
    images = images32 if script in ("acgan", "dcgan") else images28
    generator, discriminator = {
        "gan": lambda: (ns["Generator"](100, shape), ns["Discriminator"](shape)),
        "cgan": lambda: (ns["Generator"](100, 10, shape), ns["Discriminator"](10, shape)),
        "acgan": lambda: (ns["Generator"](100, 10, shape, 8), ns["Discriminator"](10, shape, 8)),
        "wgan": lambda: (ns["Generator"](100, shape), ns["Critic"](shape)),
        "wgan_gp": lambda: (ns["Generator"](100, shape), ns["Critic"](shape)),
        "dcgan": lambda: (ns["Generator"](100, 1, 32, 8), ns["Discriminator"](1, 32, 8)),
    }[script]()
    opt_g, opt_d = adam(generator), adam(discriminator)
    before = [p.detach().clone() for p in generator.parameters()]
    for step in range(2):
        if script in ("cgan", "acgan"):
            logged = ns["train_step"](images, labels, generator, discriminator, opt_g, opt_d)
        elif script in ("wgan", "wgan_gp"):
            logged = ns["train_step"](images, generator, discriminator, opt_g, opt_d, True)
        else:
            logged = ns["train_step"](images, generator, discriminator, opt_g, opt_d)
    return logged, before, generator


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_pasted_block_trains_alone(script, monkeypatch):
    block, imports, _ = block_of(script)
    monkeypatch.setitem(sys.modules, "common", None)   # `import common` would fail: the block must not need it
    namespace = {"__name__": "pasted"}
    exec(compile(imports + "\n" + block, f"<{script} block>", "exec"), namespace)
    torch.manual_seed(0)
    logged, before, generator = build_and_step(namespace, script)
    assert all(torch.isfinite(value).all() for value in logged.values())
    assert any(not torch.equal(old, new) for old, new in zip(before, generator.parameters()))   # G learned


COPIED = """
import importlib, os, sys
from pathlib import Path
folders = [Path(p) for p in sys.argv[1:]]
for folder in folders:   # each script alone with common.py: nothing else of the repository is importable
    os.chdir(folder)
    sys.path[0] = str(folder)
    for name in ("common", folder.name):
        sys.modules.pop(name, None)
    script, common = importlib.import_module(folder.name), importlib.import_module("common")
    assert Path(script.__file__).parent == folder and Path(common.__file__).parent == folder
    small = {"acgan": ["--width", "4"], "dcgan": ["--width", "4"], "cyclegan": ["--width", "4", "--blocks", "1"]}
    for argv in (["--dataset", "fake", "--max-steps", "2", "--device", "cpu", *small.get(folder.name, [])],
                 ["--resume", "--max-steps", "3"],
                 ["--dataset", "folder", "--data-root", str(folder / "pictures"), "--max-steps", "1", "--batch-size",
                  "4", "--out", str(folder / "mine"), *small.get(folder.name, [])]):
        try:
            script.main(argv)
        except SystemExit as exit:
            raise SystemExit(f"{folder.name} {argv}: exit {exit.code}")
print("ok")
"""


def test_a_script_and_common_py_are_the_whole_program(tmp_path):
    """Each script copied with common.py alone into an empty folder trains on made-up data, resumes, and
    trains on a folder of images there; gan.py also as a command."""
    folders = []
    for script in SCRIPTS:
        folder = tmp_path / script
        folder.mkdir()
        for name in (f"{script}.py", "common.py"):
            shutil.copy(ROOT / name, folder / name)
        pictures = folder / "pictures"
        if script == "cyclegan":   # two sets of images, trainA/ and trainB/
            for side in "AB":
                write_image_folder(pictures / f"train{side}", classes=("x",), per_class=4, size=28)
        else:
            write_image_folder(pictures, classes=("cats", "dogs"), per_class=4, size=32)
        folders.append(folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    halves = [subprocess.Popen([sys.executable, "-c", COPIED, *map(str, folders[half::2])], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for half in (0, 1)]
    for process in halves:   # two at once: the tests' time on two cores
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0 and out.splitlines()[-1] == "ok", out[-2000:] + err
    for folder in folders:
        assert torch.load(folder / "runs" / folder.name / "checkpoint.pt", weights_only=True)["step"] == 3
        assert (folder / "mine" / "checkpoint.pt").is_file()
    command = subprocess.run([sys.executable, "gan.py", "--dataset", "fake", "--max-steps", "2", "--device", "cpu"],
                             cwd=tmp_path / "gan", capture_output=True, text=True, env=env, timeout=300)
    assert command.returncode == 0 and (tmp_path / "gan" / "runs" / "gan-2" / "checkpoint.pt").is_file(), command.stderr

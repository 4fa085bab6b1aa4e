"""docs/imagenet.md: every command of the page runs end to end, in order, on a tiny synthetic image folder.

The page's commands are read from its ```bash blocks (continuation lines joined, ``for … do … done`` loops run
for their first and last value, ``$IMAGENET`` pointing at the tiny folder), run in-process as ``uat`` commands
(a ``torchrun --nproc_per_node=N`` prefix is dropped: torchrun itself is tested in test_torchrun.py) with the
sizes shrunk by flags appended to them (argparse keeps the last value of a flag), torchvision's published
weights replaced by random ones (no download) and the fixed-pattern baseline screened over a small bank. The
page's ```python block then prints its table from what the commands wrote.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from test_stream import make_jpeg_tree

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "imagenet.md"
# the smallest input each network takes (AlexNet's pooling needs 63 pixels, InceptionV3's 75)
SIDE = {"alexnet": 64, "inception_v3": 75}


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def page_commands(text: str, env: dict[str, str]) -> list[list[str]]:
    """The argv (after ``uat``) of every command of the page's bash blocks, in order; loops expanded for their
    first and last value. Lines that are not uat commands (``export``) are left out."""
    def expand(line: str, values: dict[str, str]) -> list[str]:
        for k, v in sorted(values.items(), key=lambda kv: -len(kv[0])):
            line = line.replace("${" + k + "}", v).replace("$" + k, v)
        assert "$" not in line, f"an unknown variable in: {line}"
        argv = shlex.split(line, comments=True)
        if argv[:3] == ["python", "-m", "uat_core"]:
            return argv[3:]
        assert argv[0] == "torchrun" and re.fullmatch(r"--nproc_per_node=\d+", argv[1]) \
            and argv[2:4] == ["-m", "uat_core"], f"not a uat command: {line}"
        return argv[4:]

    out = []
    for block in blocks(text, "bash"):
        lines = [ln.strip() for ln in block.replace("\\\n", " ").splitlines()]
        loop = None
        for ln in lines:
            if not ln or ln.startswith("#") or ln.startswith("export "):
                continue
            m = re.fullmatch(r"for (\w+) in (.+); do", ln)
            if m:
                loop = (m[1], m[2].split(), [])
            elif ln == "done":
                var, vals, body = loop
                for v in dict.fromkeys([vals[0], vals[-1]]):
                    out += [expand(b, {**env, var: v}) for b in body]
                loop = None
            elif loop is not None:
                loop[2].append(ln)
            else:
                out.append(expand(ln, env))
    return out


def shrunk(argv: list[str]) -> list[str]:
    """``argv`` with the sizes of a CPU test: a few images, one epoch, small inputs, streamed in this process."""
    net = next((a.split(":", 1)[1] for a in argv if a.startswith("torchvision:")), "")
    net = net or next((n for n in SIDE if any(n in a for a in argv)), "")
    extra = ["--image-size", SIDE.get(net, 32), "--stream", "on", "--workers", 0, "--quiet"]
    if argv[0] == "attack":
        extra += ["--attack-size", 6, "--eval-size", 6, "--epochs", 1, "--batch-size", 3]
    elif argv[0] == "train":
        extra += ["--train-size", 12, "--eval-size", 6, "--epochs", 1, "--batch-size", 4]
    return argv + [str(a) for a in extra]


def test_the_page_uses_only_flags_that_exist():
    from uat_core.cli import build_parser
    sub = build_parser()._subparsers._group_actions[0].choices
    cmds = page_commands(PAGE.read_text(), {"IMAGENET": "/data/imagenet"})
    assert {c[0] for c in cmds} == {"attack", "train"} and len(cmds) >= 12
    for argv in cmds:
        known = {s for a in sub[argv[0]]._actions for s in a.option_strings}
        flags = [a for a in argv[1:] if a.startswith("--")]
        assert set(flags) <= known, (argv, set(flags) - known)
        sub[argv[0]].parse_args(argv[1:])            # and the values parse


@pytest.mark.slow
def test_every_command_of_the_page_runs_on_a_tiny_folder(cli, tmp_path, monkeypatch):
    import uat_core.engine.attacks.bank as bank
    import uat_core.engine.models as models

    real_net, real_bank = models._torchvision_net, bank.pattern_bank
    # published weights -> random ones for the folder's classes; the baseline's bank -> 24 patterns
    monkeypatch.setattr(models, "_torchvision_net", lambda name, k, pretrained: real_net(name, k, False))
    monkeypatch.setattr(bank, "pattern_bank", lambda shape, eps, norm="linf", **kw: real_bank(
        shape, eps, norm, kinds=("rows",), periods=(4,), random=0))
    folder = make_jpeg_tree(tmp_path / "imagenet", {"train": 6, "val": 2}, size=(80, 76))
    monkeypatch.chdir(tmp_path)                                   # the page's runs/ folders land here
    text = PAGE.read_text()
    ran = []
    for argv in page_commands(text, {"IMAGENET": str(folder)}):
        rc, _, err = cli(*shrunk(argv))
        assert rc == 0, (argv, err)
        out = Path(argv[argv.index("--out") + 1])
        m = json.loads((out / "metrics.json").read_text())
        assert m["streamed"] in (True, {"train": True, "test": True}) and m["eval_size"] == 6, argv
        ran.append(out.as_posix())
    assert "runs/table2/googlenet-idf" in ran and "runs/fig5/beta-inf" in ran and "runs/fig6/images-16000" in ran
    assert "runs/table3/resnet101-uat" in ran and "runs/table3/alexnet-natural-attack" in ran
    # Table 3's attacks took the trained models
    assert json.loads(Path("runs/table3/alexnet-uat-attack/metrics.json").read_text())["model"] == "torchvision:alexnet"

    code, = blocks(text, "python")
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, str(PAGE), "exec"), {})
    rows = buf.getvalue().splitlines()
    assert [r.split()[0] for r in rows] == ["googlenet-alg2", "googlenet-idf", "vgg16-alg2", "vgg16-alg2-8gpu",
                                          "vgg16-idf"]
    assert all("perturbed" in r and r.rstrip().endswith(" s") for r in rows)


def test_published_weights_are_refused_one_line_for_other_data(cli, tmp_path):
    """``--checkpoint torchvision:<name>`` needs 3-channel images of the 1000 ImageNet classes; both are checked
    before any download."""
    for cmd in ("attack", "eval"):
        rc, out, _ = cli(cmd, "--help")
        out = " ".join(out.split())                              # argparse wraps the help text
        assert rc == 0 and "torchvision:<name>" in out and "published ImageNet weights" in out
    folder = make_jpeg_tree(tmp_path / "tree", {"train": 1, "val": 1})
    for data, words in (("digits", "3-channel"), (f"imagefolder:{folder}", "1000 ImageNet classes")):
        rc, _, err = cli("attack", "--dataset", data, "--checkpoint", "torchvision:vgg16", "--image-size", 32,
                         "--out", tmp_path / "out")
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert not (tmp_path / "out").exists()

"""The wheel works outside the repository: ``pip wheel --no-deps --no-build-isolation`` builds it
from a copy of the sources; it holds the embedded assets, the compiled extension, the SPDX licence
and the console entry points; installed into an empty directory, its commands run with the
checkout out of reach (another working directory; the package, its extension, tokenizer and
corpus all resolved inside the install).

Compile time: setuptools' ``build_ext`` skips an extension whose output is newer than all its
sources and depends (its own up-to-date rule). The copy is therefore seeded with the extension that
``make install`` compiled from the same csrc/ and setup.py (kept only if still newer than every
source, copied with its timestamps); the build log must show build_ext deciding about
``megatron_th._C`` (built or up to date). A cold build compiles csrc/ (about 9 s on 2 busy cores):
``MEGATRON_TH_COLD_WHEEL=1`` skips the seeding.
"""
import os
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "csrc", "megatron_th")
COMMANDS = {
    "megatron-th-preprocess": "megatron_th.data.preprocess:main",
    "megatron-th-convert-to-hf": "megatron_th.cli.convert_to_hf:main",
    "megatron-th-convert-from-hf": "megatron_th.cli.convert_from_hf:main",
    "megatron-th-estimate": "megatron_th.cli.estimate:main",
}


def _copy_sources(dst: str) -> None:
    """The files the build reads, with their timestamps; no build products of the checkout."""
    os.makedirs(dst)
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "build")
    for name in SOURCES:
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dst, name), ignore=skip)
        else:
            shutil.copy2(src, dst)


def _seed_extension(src: str) -> None:
    """Puts the installed megatron_th._C where build_ext writes it (setuptools' build_platlib)."""
    from setuptools.dist import Distribution

    try:
        import megatron_th._C as ext
    except ImportError:  # nothing to reuse: the build compiles
        return
    build = Distribution().get_command_obj("build")
    build.finalize_options()
    dst = os.path.join(src, build.build_platlib, "megatron_th", os.path.basename(ext.__file__))
    os.makedirs(os.path.dirname(dst))
    shutil.copy2(ext.__file__, dst)


def _run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_wheel_runs_outside_the_repository(tmp_path):
    src, dist, target, elsewhere = (str(tmp_path / d) for d in ("src", "dist", "site", "elsewhere"))
    _copy_sources(src)
    if not os.environ.get("MEGATRON_TH_COLD_WHEEL"):
        _seed_extension(src)
    build = _run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-C", "verbose=1",
                  ".", "-w", dist], cwd=src)
    log = build.stdout + build.stderr
    assert ("building 'megatron_th._C' extension" in log
            or "skipping 'megatron_th._C' extension (up-to-date)" in log), "build_ext never saw megatron_th._C"
    warnings = [line for line in log.splitlines() if "Warning:" in line]
    assert not warnings, warnings  # e.g. setuptools on a TOML-table `license`
    [wheel] = os.listdir(dist)
    with zipfile.ZipFile(os.path.join(dist, wheel)) as z:
        names = set(z.namelist())
        info = wheel.split("-")[0] + "-" + wheel.split("-")[1] + ".dist-info"
        entry_points = z.read(f"{info}/entry_points.txt").decode() if f"{info}/entry_points.txt" in names else ""
        metadata = z.read(f"{info}/METADATA").decode()
    assets = {os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, "/")
              for d, _, fs in os.walk(os.path.join(ROOT, "megatron_th", "assets")) for f in fs}
    assert "megatron_th/assets/tokenizer/th_en.model" in assets and "megatron_th/assets/corpus/th_wiki.jsonl" in assets
    assert assets <= names, sorted(assets - names)
    assert [n for n in names if n.startswith("megatron_th/_C.") and n.endswith(".so")]
    assert "[console_scripts]" in entry_points, f"no console scripts in {wheel}"
    for cmd, func in COMMANDS.items():
        assert f"{cmd} = {func}" in entry_points
        assert func.split(":")[0].replace(".", "/") + ".py" in names
    assert "License-Expression: Apache-2.0 AND CC0-1.0" in metadata and "Requires-Dist: tqdm" in metadata
    assert f"{info}/licenses/megatron_th/assets/LICENSE" in names and f"{info}/licenses/LICENSE" in names

    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile", "--target", target,
          os.path.join(dist, wheel)])
    os.makedirs(elsewhere)
    env = {**os.environ, "PYTHONPATH": target, "PYTHONNOUSERSITE": "1"}
    probe = ("import megatron_th, megatron_th._C, megatron_th.data.kernels as k, megatron_th.data.embedded as e\n"
             "from megatron_th.data.tokenizer import load_tokenizer\n"
             "assert k.HAVE_CPP and load_tokenizer(e.DEFAULT_TOKENIZER).vocab_size == 8000\n"
             "print(megatron_th.__file__, megatron_th._C.__file__, e.DEFAULT_TOKENIZER, e.corpus_files()[0])")
    where = _run([sys.executable, "-c", probe], cwd=elsewhere, env=env).stdout.split()
    assert len(where) == 4 and all(p.startswith(target + os.sep) and os.path.isfile(p) for p in where), where
    for cmd in COMMANDS:  # the console scripts pip wrote from entry_points.txt
        usage = _run([os.path.join(target, "bin", cmd), "--help"], cwd=elsewhere, env=env).stdout
        assert usage.startswith(f"usage: {cmd} "), usage

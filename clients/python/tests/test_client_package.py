"""clients/python builds as a wheel (what `pip install ./clients/python` installs): every
module, the py.typed marker, and no runtime dependency."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def test_the_package_builds_a_typed_wheel_without_dependencies(tmp_path):
    source = tmp_path / "python"  # a copy: the build's egg-info and build/ stay out of the checkout
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    # the build backend from this environment (setuptools), so the test needs no network
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "dist"), str(source)], check=True)
    (wheel,) = (tmp_path / "dist").glob("dlm_client-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"dlm_client/{p.name}" for p in (PACKAGE / "src" / "dlm_client").glob("*.py")}
    assert modules | {"dlm_client/py.typed"} <= names, sorted(names)
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Name: dlm-client" in text and "Requires-Dist" not in text

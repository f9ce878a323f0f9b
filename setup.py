"""Build the Cython kernels and install one import namespace, ``splitpoint``.

The design-card folders stay at the top level (firmware/, hal/, pyx/) and are
mapped into the namespace, so nothing is installed as a top-level ``hal``,
``pyx`` or ``firmware`` module.  Every ``pyx/*.pyx`` is a kernel; its pure-Python
twin lives beside it as ``pyx/<name>_py.py``. ``SPLITPOINT_ONLY=ring,frame``
builds just those kernels (handy while another one is being edited).
"""
import glob
import os
import re

from setuptools import Extension, setup

#: import package -> source folder; sub-packages (any folder with an __init__.py) follow their parent
ROOTS = {
    "splitpoint": "splitpoint",
    "splitpoint.firmware": "firmware",
    "splitpoint.hal": "hal",
    "splitpoint.pyx": "pyx",
    "splitpoint.boards": "boards",
}


def _package_dir():
    mapping = {}
    for package, folder in ROOTS.items():
        for here, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            if "__init__.py" in files:
                rel = os.path.relpath(here, folder)
                name = package if rel == "." else package + "." + rel.replace(os.sep, ".")
                mapping[name] = here
    return mapping


PACKAGE_DIR = _package_dir()


def _packages():
    return sorted(PACKAGE_DIR)


def _version():
    with open("splitpoint/__init__.py", encoding="utf-8") as fh:
        return re.search(r'^__version__ = "([^"]+)"', fh.read(), re.M).group(1)


def _cython_include_dir():
    """A folder where Cython finds pyx/<name>.pxd under its module name, splitpoint/pyx/<name>.pxd.

    The kernels cimport each other as ``splitpoint.pyx.<name>``, but the source
    folder is ``pyx/``; a symlink under build/ gives Cython the namespace layout.
    """
    top = os.path.join("build", "cython-include")
    link = os.path.join(top, "splitpoint", "pyx")
    if not os.path.islink(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.abspath("pyx"), link)
    return top


def _extensions():
    if os.environ.get("SPLITPOINT_NO_EXTENSIONS") == "1":
        return []
    from Cython.Build import cythonize

    only = {n for n in os.environ.get("SPLITPOINT_ONLY", "").split(",") if n}
    exts = [
        Extension(
            f"splitpoint.pyx.{os.path.splitext(os.path.basename(src))[0]}",
            [src],
            extra_compile_args=["-O3", "-std=c11"],
            depends=sorted(glob.glob("pyx/*.h")),
        )
        for src in sorted(glob.glob("pyx/*.pyx"))
        if not only or os.path.splitext(os.path.basename(src))[0] in only
    ]
    return cythonize(
        exts,
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False, "cdivision": True},
        include_path=[_cython_include_dir(), "pyx"],
    )


def _cffi_modules():
    """The firmware core's host build (boards/firmware/host/build.py); it has no Python twin, so it is
    built even when SPLITPOINT_NO_EXTENSIONS asks for the kernels' twins."""
    return ["boards/firmware/host/build.py:ffibuilder"]


setup(
    version=_version(),
    packages=_packages(),
    package_dir=PACKAGE_DIR,
    package_data={
        "splitpoint.pyx": ["*.pxd", "*.pyi", "*.h"],
        "splitpoint": ["py.typed"],
        "splitpoint.boards": ["*/*.toml", "*.toml"],
        "splitpoint.boards.firmware": ["core/*.[ch]", "host/*.[ch]", "host/*.py"],
    },
    ext_modules=_extensions(),
    cffi_modules=_cffi_modules(),
    zip_safe=False,
)

"""Builds the C++ helpers in csrc/ into megatron_th._C at install time (pybind11, no torch)."""
from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext = Pybind11Extension(
    "megatron_th._C",
    sorted(["csrc/module.cpp", "csrc/sample_index.cpp", "csrc/blending.cpp", "csrc/packing.cpp"]),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})

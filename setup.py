"""Builds the C++ helpers in csrc/ into megatron_th._C at install time (pybind11, no torch).

``depends`` lists the header so that setuptools' build_ext, which skips an extension whose output
is newer than its sources and depends, rebuilds after a header change too.
"""
from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext = Pybind11Extension(
    "megatron_th._C",
    sorted(["csrc/module.cpp", "csrc/sample_index.cpp", "csrc/blending.cpp", "csrc/packing.cpp",
            "csrc/sft_packing.cpp"]),
    include_dirs=["csrc"],
    depends=["csrc/kernels.h"],
    cxx_std=17,
    extra_compile_args=["-O3", "-pthread"],  # blending.cpp starts std::threads (glibc < 2.34 needs -pthread)
    extra_link_args=["-pthread"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})

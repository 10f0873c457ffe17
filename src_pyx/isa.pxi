# Included by every compiled module with kernels: the module's kernel path (kernels.h), set
# by fastlstm.isa.

from matmul cimport fl_active_isa, fl_isa_supported, fl_set_isa


def set_isa(int level):
    """Run this module's kernels on path `level` (enum fl_isa); ValueError if the CPU lacks it."""
    if fl_set_isa(level) < 0:
        raise ValueError(f"this CPU cannot run kernel path {level}")


def isa_active():
    """This module's kernel path (enum fl_isa)."""
    return fl_active_isa()


def isa_supported(int level):
    """Whether this CPU can run kernel path `level` (enum fl_isa)."""
    return bool(fl_isa_supported(level))

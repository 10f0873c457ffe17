# fastlstm._packed's PackedModel, declared here (in the package, where Cython looks for
# fastlstm._packed) so that the kernel modules can cimport it; src_pyx/_packed.pyx builds it.

from stack cimport Stack


cdef class PackedModel:
    cdef Stack stack            # what the kernels read (stack.pxd)
    cdef readonly str rnn_type
    cdef readonly long long step_weights
    # The Python objects whose arrays `stack` points into, as given (kept alive here).
    cdef readonly list layers
    cdef readonly object emb, table, head, head_w, head_b

# fastlstm._packed: a model's packed weights gathered once, at load, into the C struct the
# kernel loops read (stack.pxd's Stack).
#
#   fastlstm.pack (PackedLayer, PackedMatrix: NumPy arrays in matmul.h's panels)
#   -> PackedModel: every pointer, size and type checked here, once
#   -> _rnn.forward / _rnn.prefill / _generate.decode / _forecast.forecast read model.stack
#
# A PackedModel keeps the arrays it points into alive, and nothing changes them afterwards,
# so a call checks only its own arguments (states, ids, outputs).

from libc.stdlib cimport free, malloc

from stack cimport (CELL_GRU, CELL_GRU_RESET_BEFORE, CELL_LSTM, Layer, cell_code, fill_matrix,
                    fill_rows, float_ptr, gates_of)

import numpy as np  # stack.pxd's checks read it


cdef int check_size(array, Py_ssize_t size, str name) except -1:
    """That an optional array holds `size` values."""
    if array is not None and array.size != size:
        raise ValueError(f"{name} holds {array.size} values; expected {size}")
    return 0


cdef int check_layer(const Layer *L, int cell, int G, layer, int i) except -1:
    """That layer i's matrices and biases have the sizes its cell needs (GRU_RESET_BEFORE:
    W_hh's r and z rows in w_hh, its n rows in w_hn; an LSTM projection in w_hr)."""
    cdef int hh_rows = 2 * L.hidden if cell == CELL_GRU_RESET_BEFORE else G * L.hidden
    if L.hidden < 1 or L.w_ih_p.n != G * L.hidden or L.w_hh_p.n != hh_rows:
        raise ValueError(f"layer {i}: weight sizes do not match its {L.hidden} hidden units")
    if (L.w_hn_p.panels != NULL) != (cell == CELL_GRU_RESET_BEFORE) or (
            L.w_hn_p.panels != NULL and (L.w_hn_p.n != L.hidden or L.w_hn_p.k != L.out_size)):
        raise ValueError(f"layer {i}: w_hn is GRU_RESET_BEFORE's (hidden, out_size) n rows")
    if L.w_hr_p.panels != NULL:
        if cell != CELL_LSTM or L.w_hr_p.n != L.out_size or L.w_hr_p.k != L.hidden:
            raise ValueError(f"layer {i}: w_hr is an LSTM's (proj_size, hidden) projection")
    elif L.out_size != L.hidden:
        raise ValueError(f"layer {i}: its output size differs from its hidden size without a "
                         "projection")
    if (L.bias_hn != NULL) != (cell == CELL_GRU):
        raise ValueError(f"layer {i}: bias_hn is GRU's (and GRU's only)")
    check_size(layer.bias_x, G * L.hidden, f"layer {i} bias_x")
    check_size(layer.bias_hn, L.hidden, f"layer {i} bias_hn")
    if (L.w_ih != NULL) != (L.w_hh != NULL) or (L.w_hr != NULL) != (
            L.w_ih != NULL and L.w_hr_p.panels != NULL):
        raise ValueError(f"layer {i}: row-major copies come for every matrix or none")
    check_size(layer.w_ih, L.w_ih_p.n * L.w_ih_p.k, f"layer {i} w_ih")
    check_size(layer.w_hh, L.w_hh_p.n * L.w_hh_p.k, f"layer {i} w_hh")
    check_size(layer.w_hr, L.w_hr_p.n * L.w_hr_p.k, f"layer {i} w_hr")
    return 0


cdef class PackedModel:
    """The weights of a model as the kernels read them: a stack of `fastlstm.pack.PackedLayer`
    (PyTorch's gate order, any precision), where layer 0's input comes from, and the head.

    Args:
        rnn_type: "LSTM", "GRU", "GRU_RESET_BEFORE", "RNN_TANH" or "RNN_RELU".
        layers: the packed layers, bottom first.
        emb, table: for token-id inputs, layer 0's input: the embedding (vocab, in0), or the
            lookup table of its input projections (vocab, gates*hidden0), each a
            `fastlstm.precision.Stored`; neither for float inputs.
        head: the head (outputs, out_last) as a `PackedMatrix`; None for layers alone.
        head_w: the head row-major float32 (outputs, out_last), for BLAS; or None.
        head_b: the head's bias (outputs,) float32; or None.

    Raises ValueError if a size does not fit the cell or the layers around it, or an array
    is not what the kernels read (type, size, alignment): the kernels trust what this
    checked.
    """

    def __cinit__(self):
        self.stack.layers = NULL

    def __init__(self, str rnn_type, list layers, *, emb=None, table=None, head=None,
                 head_w=None, head_b=None):
        cdef Stack *s = &self.stack
        cdef int i, n = len(layers), G
        cdef Layer *L
        if n == 0:
            raise ValueError("no layers")
        if emb is not None and table is not None:
            raise ValueError("layer 0 reads an embedding or a lookup table, not both")
        free(s.layers)
        s.layers = <Layer *> malloc(n * sizeof(Layer))
        if s.layers == NULL:
            raise MemoryError()
        if rnn_type not in ("LSTM", "GRU", "GRU_RESET_BEFORE", "RNN_TANH", "RNN_RELU"):
            raise ValueError(f"unknown rnn_type {rnn_type!r}")
        s.cell = cell_code(rnn_type)
        s.num_layers = n
        G = gates_of(s.cell)
        s.row_major = True
        s.max_width = s.max_gates = s.max_hidden = 0
        self.step_weights = 0
        for i, layer in enumerate(layers):
            L = &s.layers[i]
            fill_matrix(&L.w_ih_p, layer.w_ih_panels, "w_ih")
            fill_matrix(&L.w_hh_p, layer.w_hh_panels, "w_hh")
            fill_matrix(&L.w_hr_p, layer.w_hr_panels, "w_hr", True)
            fill_matrix(&L.w_hn_p, layer.w_hn_panels, "w_hn", True)
            L.w_ih = float_ptr(layer.w_ih, "w_ih", True)
            L.w_hh = float_ptr(layer.w_hh, "w_hh", True)
            L.w_hr = float_ptr(layer.w_hr, "w_hr", True)
            L.bias_x = float_ptr(layer.bias_x, "bias_x")
            L.bias_hn = float_ptr(layer.bias_hn, "bias_hn", True)
            L.in_size = L.w_ih_p.k
            L.hidden = layer.hidden_size
            L.out_size = L.w_hh_p.k
            check_layer(L, s.cell, G, layer, i)
            if i > 0 and L.in_size != s.layers[i - 1].out_size:
                raise ValueError(f"layer {i} takes {L.in_size} inputs; layer {i - 1} gives "
                                 f"{s.layers[i - 1].out_size}")
            if i > 0 and (L.hidden, L.out_size) != (s.layers[0].hidden, s.layers[0].out_size):
                raise ValueError("every layer must have the same hidden and output sizes "
                                 "(the state is one (num_layers, batch, size) array)")
            s.row_major = s.row_major and L.w_ih != NULL
            s.max_width = max(s.max_width, max(L.in_size, L.out_size))
            s.max_gates = max(s.max_gates, G * L.hidden)
            s.max_hidden = max(s.max_hidden, L.hidden)
            for m in (layer.w_ih_panels, layer.w_hh_panels, layer.w_hr_panels,
                      layer.w_hn_panels):
                if m is not None:
                    self.step_weights += m.n * m.k
        s.emb.data = s.table.data = NULL
        if emb is not None:
            fill_rows(&s.emb, emb, "emb")
        if table is not None:
            fill_rows(&s.table, table, "table")
        L = &s.layers[0]
        if emb is not None and s.emb.width != L.in_size:
            raise ValueError(f"the embedding has {s.emb.width} columns; layer 0 takes {L.in_size}")
        if table is not None and s.table.width != G * L.hidden:
            raise ValueError(f"the lookup table has {s.table.width} columns; layer 0 has "
                             f"{G * L.hidden} gate units")
        fill_matrix(&s.head, head, "head", True)
        s.head_w = float_ptr(head_w, "head_w", True)
        s.head_b = float_ptr(head_b, "head_b", True)
        if head is not None:
            if head.k != s.layers[n - 1].out_size:
                raise ValueError(f"the head takes {head.k} inputs; the top layer gives "
                                 f"{s.layers[n - 1].out_size}")
            check_size(head_w, head.n * head.k, "head_w")
            check_size(head_b, head.n, "head_b")
            self.step_weights += head.n * head.k
            s.row_major = s.row_major and s.head_w != NULL
        elif head_w is not None or head_b is not None:
            raise ValueError("head_w and head_b need a head")
        self.rnn_type = rnn_type
        self.layers, self.emb, self.table = layers, emb, table
        self.head, self.head_w, self.head_b = head, head_w, head_b

    def __dealloc__(self):
        free(self.stack.layers)

    @property
    def row_major(self) -> bool:
        """Whether every weight is also held row-major in float32, so BLAS may multiply
        (float32 models on CPUs without matmul.h's vector paths)."""
        return bool(self.stack.row_major)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays the kernels read, each counted once (a tied embedding and head
        share theirs): the lookup table and any row-major copies for BLAS included."""
        arrays = [self.head_w, self.head_b]
        for rows in (self.emb, self.table):
            if rows is not None:
                arrays += [rows.data, rows.scale]
        if self.head is not None:
            arrays += self.head.arrays
        for layer in self.layers:
            arrays += layer.arrays
        distinct = {id(a): a for a in arrays if a is not None}
        return sum(a.nbytes for a in distinct.values())

"""Running a model over the calibration samples segment by segment, keeping only the activations still needed.

A Stream holds, for every calibration sample, the values at its frontier: the values computed so far that a node not
yet run still reads. `advance(stop)` runs every node before `stop` in one onnxruntime session built from just those
nodes, so walking a model from conv to conv costs one forward pass in all, whatever the number of stops; memory is
bounded by the widest frontier times the number of samples. Past the stream's memory limit, new arrays go to files
in a temporary folder (read back one sample at a time), so memory stays bounded at any sample count.

The model may change between advances (a node not yet run may be rewritten, nodes may be inserted before nodes not
yet run): a stream follows the graph as it is at each advance. Constant nodes are never "run": every segment that
reads one carries it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator

import numpy as np
import onnx
import onnx_ir as ir

from onebyone.errors import OneByOneError, first_line
from onebyone.verify.onnxruntime_run import IN_MEMORY_BYTES, in_memory_stub, session

MEMORY_LIMIT = 512 * 2**20  # bytes of activations a stream keeps in memory before it spills new ones to disk


class SpillFiles:
    """The files spilled columns write to, in one temporary folder. A dropped column's file serves the next spilled
    column (written over from its start): rewriting pages the system already holds costs less than freeing a file's
    pages and allocating new ones (open_nsfw's fitting walk at 128 samples wrote several GB in 1,920 writes; deleting
    its files took 0.9 s, half as long as writing them)."""

    def __init__(self) -> None:
        self.folder: str | None = None
        self._free: list = []
        self._open: list = []
        self._capacity: dict[int, int] = {}  # id of an open file -> the most bytes written to it

    def take(self, size: int = 0):
        """A file to write `size` bytes from its start: of the files dropped columns gave back, the smallest that
        holds them, else the largest (it grows), else a fresh one; so the files together stay near the most the
        live columns ever held, as when each column had its own file."""
        if self._free:
            sizes = [self._capacity.get(id(f), 0) for f in self._free]
            fits = [i for i, n in enumerate(sizes) if n >= size]
            pick = min(fits, key=sizes.__getitem__) if fits else max(range(len(sizes)), key=sizes.__getitem__)
            return self._free.pop(pick)
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="onebyone-stream-")
        f = tempfile.TemporaryFile(dir=self.folder)  # noqa: SIM115 - closed with the pool
        self._open.append(f)
        return f

    def give(self, f, used: int) -> None:
        """Hand back a dropped column's file, `used` bytes of it written (closed instead when the pool is)."""
        if self.folder is None:
            f.close()
        else:
            self._capacity[id(f)] = max(self._capacity.get(id(f), 0), used)
            self._free.append(f)

    def close(self) -> None:
        """Close every file and remove the folder (columns still holding a file can no longer be read)."""
        for f in self._open:
            f.close()
        self._open, self._free, self._capacity = [], [], {}
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


class Column:
    """One value's arrays, one per sample, in memory or in a file of `spill` (written once per sample, read back on
    demand; the file goes back to the pool with the column)."""

    def __init__(self, count: int, spill: SpillFiles | None = None, size: int = 0) -> None:
        self.count = count
        self._items: list = [None] * count
        self._pool = spill
        self._file = spill.take(size) if spill else None  # `size`: the bytes it will hold, when known
        self._end = 0
        self.nbytes = 0

    @classmethod
    def of(cls, arrays: list[np.ndarray]) -> Column:
        """A column in memory holding `arrays` as they are (not counted against a memory limit)."""
        col = cls(len(arrays))
        col._items = list(arrays)
        return col

    def __setitem__(self, i: int, array: np.ndarray) -> None:
        array = np.asarray(array, order="C")  # not np.ascontiguousarray: it makes a 0-d value (a Gather of a shape) 1-d
        self.nbytes += array.nbytes
        if self._file is None:
            self._items[i] = array
            return
        self._file.seek(self._end)
        self._file.write(memoryview(array.reshape(-1)).cast("B"))
        self._items[i] = (self._end, array.shape, array.dtype)
        self._end += array.nbytes

    def __getitem__(self, i: int) -> np.ndarray:
        item = self._items[i]
        if self._file is None:
            return item
        offset, shape, dtype = item
        self._file.seek(offset)
        data = self._file.read(int(np.prod(shape)) * np.dtype(dtype).itemsize)
        return np.frombuffer(data, dtype=dtype).reshape(shape)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(self.count))

    @property
    def in_memory(self) -> int:
        return 0 if self._file is not None else self.nbytes

    def __del__(self) -> None:
        if self._file is not None:
            self._pool.give(self._file, self._end)
            self._file = None


def reads(node: ir.Node) -> set[str]:
    """Names of the values `node` reads: its inputs and what its subgraphs take from the enclosing graphs."""
    names = {v.name for v in node.inputs if v is not None and v.name}
    for attr in node.attributes.values():
        graphs = [attr.value] if attr.type == ir.AttributeType.GRAPH else (
            list(attr.value) if attr.type == ir.AttributeType.GRAPHS else [])
        for g in graphs:
            defined = {v.name for v in g.inputs} | set(g.initializers)
            used: set[str] = set()
            for inner in g:
                used |= reads(inner)
                defined |= {v.name for v in inner.outputs if v is not None}
            names |= used - defined
    return names


class Stream:
    """`model` run over `samples` (feed dicts) node range by node range; see the module docstring.

    `keep`: names never dropped from the frontier once computed (e.g. the model's outputs).
    `memory_limit`: bytes of activations kept in memory; beyond it, new columns are written to disk."""

    def __init__(self, model: ir.Model, samples: list[dict], label: str = "calibration",
                 keep: Iterable[str] = (), memory_limit: int = MEMORY_LIMIT) -> None:
        self.model = model
        self.count = len(samples)
        self.label = label
        self.keep = set(keep)
        self.memory_limit = memory_limit
        self.peak_in_memory = 0
        self._spill = SpillFiles()
        self._done: dict[int, ir.Node] = {}  # id -> node (held, so ids stay unique)
        self._arrays: dict[str, tuple] = {}  # initializer name -> (its tensor, its array)
        self.state: dict[str, Column] = {}
        self._reused: tuple | None = None  # the last reusable peek's (key, nodes, session, inputs, weights)
        for name in {v.name for v in model.graph.inputs}:
            if samples and name in samples[0]:
                self.state[name] = Column.of([feed[name] for feed in samples])
        self._drop_unread()

    # ---- running -------------------------------------------------------------------------------------------------
    def advance(self, stop: ir.Node | None, through: bool = False, capture: Iterable[str] = ()) -> dict[str, Column]:
        """Run every node not yet run that comes before `stop` (and `stop` itself with `through`; None: all), then drop
        the values nothing left to run reads. Returns the `capture`d values' columns (kept for the caller even when
        the stream drops them)."""
        nodes = list(self.model.graph)
        end = len(nodes) if stop is None else nodes.index(stop) + (1 if through else 0)
        constants = constant_nodes(self.model.graph)
        constant = {id(n) for n in constants.values()}
        run = [n for n in nodes[:end] if id(n) not in self._done and id(n) not in constant]
        capture = list(capture)
        later = self._reads(n for n in nodes[end:] if id(n) not in self._done)
        produced = {v.name for n in run for v in n.outputs if v is not None and v.name}
        wanted = [name for name in produced if name in later or name in self.keep or name in capture]
        if run:
            self._run(run, sorted(wanted), constants)
        for n in run:
            self._done[id(n)] = n
        captured = {name: self.state[name] for name in capture if name in self.state}
        self._drop_unread(later)
        return captured

    def adopt(self, other: Stream, counterpart) -> None:
        """Take `other`'s progress as this stream's: its frontier (the same columns, shared) and, as run, every node
        whose `counterpart` (a node of `other`'s model, or None) `other` has run. For a stream of a model that equals
        `other`'s up to there (a copy being rewritten after that point). `other` must outlive the shared columns'
        use (its spill files hold them)."""
        for n in self.model.graph:
            twin = counterpart(n)
            if twin is not None and id(twin) in other._done:
                self._done[id(n)] = n
        self.state = dict(other.state)
        self._drop_unread()

    def peek(self, names: list[str], given: dict[str, list[np.ndarray]] | None = None,
             reuse: bool = False) -> list[dict[str, np.ndarray]]:
        """Per sample, the named values computed from the frontier by the nodes not yet run, without advancing
        (the frontier and the model are left as they are). `given`: values taken as computed, one array per sample
        (the nodes producing them are not run). With `reuse`, the onnxruntime session of the last `reuse` peek
        serves again when it would run the same nodes on the same inputs (one session for many peeks that differ
        only in `given`)."""
        state = {**self.state, **{k: Column.of(v) for k, v in (given or {}).items()}}
        constants = constant_nodes(self.model.graph)
        constant = {id(n) for n in constants.values()}
        nodes = [n for n in self.model.graph if id(n) not in self._done and id(n) not in constant]
        needed, run = set(names), []
        for n in reversed(nodes):
            if any(v is not None and v.name in needed and v.name not in state for v in n.outputs):
                run.append(n)
                needed |= reads(n)
        run.reverse()
        have = [name for name in names if name in state]
        results = (self._execute(run, [name for name in names if name not in have], constants, state, reuse)
                   if run else None)
        out = []
        for i in range(self.count):
            got = {name: state[name][i] for name in have}
            if results is not None:
                got.update({name: col[i] for name, col in results.items()})
            out.append(got)
        return out

    def close(self) -> None:
        """Drop the frontier and the spill folder (columns handed out stay readable only when in memory)."""
        self.state.clear()
        self._reused = None
        self._spill.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals -----------------------------------------------------------------------------------------------
    def _reads(self, nodes: Iterable[ir.Node]) -> set[str]:
        names: set[str] = set()
        for n in nodes:
            names |= reads(n)
        return names

    def _drop_unread(self, needed: set[str] | None = None) -> None:
        if needed is None:
            needed = self._reads(n for n in self.model.graph if id(n) not in self._done)
        for name in [k for k in self.state if k not in needed and k not in self.keep]:
            del self.state[name]

    def _run(self, nodes: list[ir.Node], outputs: list[str], constants: dict[str, ir.Node]) -> None:
        self.state.update(self._execute(nodes, outputs, constants))
        self.peak_in_memory = max(self.peak_in_memory, sum(c.in_memory for c in self.state.values()))

    def _execute(self, nodes: list[ir.Node], outputs: list[str], constants: dict[str, ir.Node],
                 state: dict[str, Column] | None = None, reuse: bool = False) -> dict[str, Column]:
        """Run `nodes` (in order) on every sample from the frontier (`state`: the frontier with values added), one
        run per sample, carrying the `constants` (constant_nodes of the model) they read; columns of `outputs`.
        With `reuse`: see peek."""
        if not outputs:
            return {}
        state = self.state if state is None else state
        needed = self._needed(nodes)
        key = ([id(n) for n in nodes], outputs, sorted(name for name in needed if name in state))
        if reuse and self._reused is not None and self._reused[0] == key:
            sess, inputs = self._reused[2], self._reused[3]
        else:
            proto, inputs, weights = self._segment(nodes, outputs, state, needed, constants)
            sess = session(proto, f"{self.label} (segment)", initializers=weights)
            if reuse:  # the nodes are held, so that their ids stay theirs while the key is compared
                self._reused = (key, list(nodes), sess, inputs, weights)
        columns: dict[str, Column] = {}
        in_memory = sum(c.in_memory for c in self.state.values())
        for i in range(self.count):
            try:
                results = sess.run(outputs, {name: state[name][i] for name in inputs})
            except Exception as exc:  # noqa: BLE001 - a failed run is the model's or the inputs' problem
                raise OneByOneError(f"onnxruntime failed to run {self.label}: {first_line(exc)}") from None
            if i == 0:
                for name, arr in zip(outputs, results):
                    size = arr.nbytes * self.count
                    spill = in_memory + size > self.memory_limit
                    columns[name] = Column(self.count, self._spill if spill else None, size)
                    in_memory += 0 if spill else size
            for name, arr in zip(outputs, results):
                columns[name][i] = arr
        return columns

    def _needed(self, nodes: list[ir.Node]) -> set[str]:
        """The names `nodes` read that they do not produce themselves."""
        produced = {v.name for n in nodes for v in n.outputs if v is not None and v.name}
        return self._reads(nodes) - produced

    def _segment(self, nodes: list[ir.Node], outputs: list[str], state: dict[str, Column], needed: set[str],
                 constants: dict[str, ir.Node]) -> tuple[onnx.ModelProto, list[str], dict]:
        """A model of `nodes` reading the frontier values it needs (`needed`: see _needed; typed from sample 0) and
        the constants; the names of its frontier inputs; its initializers' arrays (handed to onnxruntime as they
        are, not serialized)."""
        graph = onnx.GraphProto(name="segment")
        carried, needed = _carried(constants, needed, state)
        graph.node.extend(ir.serde.serialize_node(n) for n in self.model.graph if id(n) in carried)
        graph.node.extend(ir.serde.serialize_node(n) for n in nodes)
        initializers = self.model.graph.initializers
        inputs, weights = [], {}
        for name in sorted(needed):
            if name in state:
                arr = state[name][0]
                graph.input.append(onnx.helper.make_tensor_value_info(
                    name, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape))
                inputs.append(name)
            elif name in initializers and initializers[name].const_value is not None:
                tensor = initializers[name].const_value
                if tensor.dtype.is_floating_point() and tensor.nbytes >= IN_MEMORY_BYTES:
                    graph.initializer.append(self._weight(name, tensor, weights))
                else:  # small or integer data (shapes, indices) stays in the model: onnxruntime reads it when loading
                    proto = ir.serde.serialize_tensor(ir.tensor(tensor.numpy(), name=name))
                    graph.initializer.append(proto)
            elif name not in constants:
                raise OneByOneError(f"{self.label}: value {name!r} is neither computed nor a constant")
        for name in outputs:
            graph.output.add().name = name
        proto = onnx.helper.make_model(
            graph, ir_version=max(self.model.ir_version or 4, 4),
            opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in self.model.opset_imports.items()])
        proto.functions.extend(ir.serde.serialize_function(f) for f in self.model.functions.values())
        return proto, inputs, weights

    def _weight(self, name: str, tensor, weights: dict) -> onnx.TensorProto:
        """An initializer whose data onnxruntime takes from memory (the tensor's array, read once per stream)."""
        array = self._arrays.get(name)
        if array is None or array[0] is not tensor:
            array = self._arrays[name] = (tensor, np.ascontiguousarray(tensor.numpy()))
        weights[name] = array[1]
        return in_memory_stub(name, array[1])


def _is_constant(node: ir.Node) -> bool:
    return node.op_type == "Constant" and node.domain in ("", "ai.onnx") and not node.inputs


RANDOM = ("RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial")  # ops whose outputs differ per run


def constant_nodes(graph: ir.Graph) -> dict[str, ir.Node]:
    """Value name -> producer, for the nodes whose outputs are the same for every sample: Constant nodes and nodes
    reading only constants (initializers that are not graph inputs, or such nodes' outputs; e.g. the Identity nodes
    through which exporters share a bias), without subgraphs or randomness, and not producing a model output.
    A stream never runs them per sample: a segment that reads one carries it, so onnxruntime sees constants (it
    folds and fuses them as in the whole model; a conv whose bias came in as a segment input once made
    onnxruntime 1.31 drop an output it was asked for)."""
    known = {name for name, v in graph.initializers.items() if v.const_value is not None and not v.is_graph_input()}
    outputs = {v.name for v in graph.outputs}
    found: dict[str, ir.Node] = {}
    for node in graph:
        names = [v.name for v in node.outputs if v is not None and v.name]
        if not names or outputs.intersection(names) or node.domain not in ("", "ai.onnx"):
            continue
        if _is_constant(node) or _computed_from(node, known):
            for name in names:
                found[name] = node
                known.add(name)
    return found


def _computed_from(node: ir.Node, known: set[str]) -> bool:
    """Whether `node` reads only the constants named in `known` and computes the same outputs from them every run."""
    subgraphs = any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values())
    return bool(node.inputs) and node.op_type not in RANDOM and not subgraphs and all(
        v is None or v.name in known for v in node.inputs)


def _carried(constants: dict[str, ir.Node], needed: set[str], state: dict) -> tuple[set[int], set[str]]:
    """The constant nodes a segment needing `needed` carries (ids; with the constant nodes they read in turn), and
    what it needs besides them (their initializers added)."""
    carried: set[int] = set()
    rest = {name for name in needed if name not in constants or name in state}
    todo = [constants[name] for name in needed if name in constants and name not in state]
    while todo:
        node = todo.pop()
        if id(node) in carried:
            continue
        carried.add(id(node))
        for name in reads(node):
            if name in constants:
                todo.append(constants[name])
            else:
                rest.add(name)
    return carried, rest

"""A small stand-in for Nuke's ``nuke`` Python module, for testing the SparseMat node without Nuke.

It implements only the documented calls the node uses, with Nuke's documented
behaviour, and real pixels: a Read reads EXR files through OpenImageIO (``####``,
``%04d``, ``%V`` in paths; first/last, before/after, on_error), a Write renders its
input to EXR (half or float, ``channels``, ``compression``; written to a temporary
name and renamed), ``nuke.execute`` runs the ``beforeFrameRender`` callbacks before
each frame of each view (the root's ``views`` knob: "main" unless set). Images are
float32 arrays per channel (``rgba.red``, ``layer.alpha``), top row first; colour
management is not modelled (``raw`` reads and writes are the only kind the node
uses, and EXR is linear in Nuke's default config anyway).

The main thread is modelled too: ``executeInMainThread`` queues calls that only the
main thread runs, inside ``standin_run_until`` (a stand-in helper, not Nuke API),
and every queued call is recorded with the thread that asked for it. A script that
blocks the main thread waiting on such calls never sees them run, as in Nuke.
Names starting with ``standin_`` exist only here.

Refusals real Nuke makes, which the stand-in makes too (sources: Foundry's Python API
reference for the calls; public Nuke tools, collected in the project's notes, for the
refusals):

- ``nuke.execute`` inside a render callback (``beforeFrameRender`` and the like) raises
  "I'm already executing something else", and so does changing a knob there.
- The Assert node's ``expression`` is an integer knob (Foundry's ``Assert.cpp``): it takes an
  expression through ``setExpression``; ``setValue`` with expression text is refused.
"""
from __future__ import annotations

import os
import queue
import re
import sys
import threading
import time

import numpy as np

GUI = True

messages: list[str] = []  # nuke.message texts
standin_main_thread_calls: list[tuple[str, str]] = []  # (function name, thread that asked)

_main_thread = threading.main_thread()
_queue: "queue.Queue" = queue.Queue()
_callbacks: dict[str, list] = {"beforeFrameRender": []}
_context = threading.local()
_layers: dict[str, list[str]] = {}
_plugin_paths: list[str] = []
_menus: dict = {}


# ---- knobs -------------------------------------------------------------------------------------------

class Knob:
    default = ""

    def __init__(self, name: str, label: str | None = None, *args):  # Nuke's signature; the label is not shown
        self._name = name
        self._value = self.default
        self._tooltip, self._visible = "", True
        self.node = None

    def name(self) -> str:
        return self._name

    def value(self):
        return self._value

    getValue = value

    def setValue(self, value) -> bool:
        _refuse_while_rendering(f"set the {self._name} knob")
        self._value = self._convert(value)
        return True

    def _convert(self, value):
        return str(value)

    def fromScript(self, text: str) -> bool:
        """Sets the value from its .nk form (TCL); the stand-in's knobs hold that form as their value."""
        return self.setValue(text)

    def toScript(self) -> str:
        return str(self._value)

    def setTooltip(self, text: str) -> None:
        self._tooltip = text

    def setVisible(self, visible: bool) -> None:
        self._visible = bool(visible)



class String_Knob(Knob):
    def __init__(self, name, label=None, value=""):
        super().__init__(name, label)
        self._value = str(value)


class File_Knob(String_Knob):
    pass


class Text_Knob(String_Knob):
    pass


class Tab_Knob(Knob):
    pass


class Int_Knob(Knob):
    """An integer, or an expression of ``frame`` (``setExpression``), which ``value`` evaluates at
    the current frame, as Nuke's animated knobs do."""
    default = 0

    def __init__(self, name, label=None, *args):
        super().__init__(name, label, *args)
        self._expression = None

    def _convert(self, value):
        if isinstance(value, str) and not re.fullmatch(r"\s*-?\d+\s*", value):
            raise TypeError(f"{self._name}: an integer knob takes a number, not {value!r} (use setExpression)")
        self._expression = None
        return int(value)

    def setExpression(self, expression: str, channel: int = -1, view=None) -> bool:
        _refuse_while_rendering(f"set the {self._name} knob")
        self._expression = str(expression)
        return True

    def hasExpression(self, index: int = -1) -> bool:
        return self._expression is not None

    def value(self, view=None):
        return self.evaluate(frame()) if self._expression is not None else self._value

    getValue = value

    def evaluate(self, number: int) -> int:
        return int(_evaluate(self._expression, number)) if self._expression is not None else self._value

    def toScript(self) -> str:
        return f"{{{self._expression}}}" if self._expression is not None else str(self._value)


class Double_Knob(Knob):
    default = 0.0

    def _convert(self, value):
        return float(value)


class Boolean_Knob(Knob):
    default = False

    def __init__(self, name, label=None, value=False):
        super().__init__(name, label)
        self._value = bool(value)

    def _convert(self, value):
        return bool(value)


class Enumeration_Knob(Knob):
    def __init__(self, name, label, values):
        super().__init__(name, label)
        self._values = [str(v) for v in values]
        self._value = self._values[0] if self._values else ""

    def values(self) -> list[str]:
        return list(self._values)

    def _convert(self, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return self._values[int(value)]
        if str(value) not in self._values:
            raise ValueError(f"{self._name}: {value!r} is not one of {self._values}")
        return str(value)


class PyScript_Knob(Knob):
    def __init__(self, name, label=None, command=""):
        super().__init__(name, label)
        self._value = command

    def execute(self):
        """Runs the knob's Python, as pressing the button does: nuke.thisNode() is its node."""
        with _this(self.node, self):
            scope = {"nuke": sys.modules[__name__]}
            exec(compile(self._value, f"<{self._name} knob>", "exec"), scope)


class Script_Knob(Knob):
    """A TCL button (a Read's 'reload'): the stand-in Read rereads its files every time anyway."""

    def execute(self):
        return None


class Channel_Knob(String_Knob):
    pass


# ---- nodes and groups ---------------------------------------------------------------------------------

class _Image:
    """Channels of one frame: name -> float32 (H, W), top row first; ``size`` None for an empty (black) image."""

    def __init__(self, size=None, channels=None):
        self.size, self.channels = size, dict(channels or {})

    def get(self, channel, size=None):
        size = size or self.size
        if channel in self.channels:
            return self.channels[channel]
        return np.zeros(size, np.float32) if size else None


class Node:
    _class = "Node"
    _max_inputs = 1

    def __init__(self, parent):
        self._parent = parent
        self._knobs: dict[str, Knob] = {}
        self._inputs: list = []
        self._selected = False
        self.addKnob(String_Knob("name", "name"))
        self.addKnob(Boolean_Knob("disable", "disable"))
        self.addKnob(String_Knob("knobChanged", "knobChanged"))
        self.addKnob(String_Knob("label", "label"))

    # identity
    def Class(self) -> str:
        return self._class

    def name(self) -> str:
        return self._knobs["name"].value()

    def fullName(self) -> str:
        if self._parent is None or self._parent is _root_node():
            return self.name()
        return f"{self._parent.fullName()}.{self.name()}"

    def setName(self, name: str, uncollide: bool = True, updateExpressions: bool = False) -> None:
        taken = {n.name() for n in self._parent._children if n is not self} if self._parent else set()
        if name in taken:
            if not uncollide:
                raise ValueError(f"name {name!r} is already in use")
            base, number = re.sub(r"\d+$", "", name), 1
            while f"{base}{number}" in taken:
                number += 1
            name = f"{base}{number}"
        self._knobs["name"]._value = name

    def __repr__(self):
        return f"<{self._class} {self.fullName()}>"

    # knobs
    def addKnob(self, knob: Knob) -> None:
        knob.node = self
        self._knobs[knob.name()] = knob

    def knob(self, name):
        return self._knobs.get(name)

    def __getitem__(self, name):
        try:
            return self._knobs[name]
        except KeyError:
            raise NameError(f"knob {name} does not exist") from None

    # inputs
    def input(self, index: int):
        return self._inputs[index] if index < len(self._inputs) else None

    def inputs(self) -> int:
        """Highest connected input + 1, as Nuke counts."""
        connected = [i for i, n in enumerate(self._inputs) if n is not None]
        return connected[-1] + 1 if connected else 0

    def maxInputs(self) -> int:
        return self._max_inputs

    def setInput(self, index: int, node) -> bool:
        if index >= self.maxInputs():
            return False
        while len(self._inputs) <= index:
            self._inputs.append(None)
        self._inputs[index] = node
        return True

    def setSelected(self, selected: bool) -> None:
        self._selected = bool(selected)

    def isSelected(self) -> bool:
        return self._selected

    # frames and errors
    def firstFrame(self) -> int:
        source = self.input(0)
        return source.firstFrame() if source is not None else int(root()["first_frame"].value())

    def lastFrame(self) -> int:
        source = self.input(0)
        return source.lastFrame() if source is not None else int(root()["last_frame"].value())

    def hasError(self) -> bool:
        """True when computing the node at the current frame fails."""
        try:
            self._render(frame(), thisView())
        except Exception:
            return True
        return False

    def _render(self, number: int, view: str) -> _Image:
        if self["disable"].value():
            return self._upstream(0, number, view)
        return self._compute(number, view)

    def _compute(self, number, view) -> _Image:
        return self._upstream(0, number, view)

    def _upstream(self, index, number, view) -> _Image:
        source = self.input(index)
        return source._render(number, view) if source is not None else _Image()


class Group(Node):
    _class = "Group"
    _max_inputs = 1000

    def __init__(self, parent):
        super().__init__(parent)
        self._children: list[Node] = []

    def begin(self):
        _stack().append(self)
        return self

    def end(self):
        if len(_stack()) > 1 and _stack()[-1] is self:
            _stack().pop()

    def __enter__(self):
        return self.begin()

    def __exit__(self, *exc):
        self.end()

    def node(self, name: str):
        head, _, rest = name.partition(".")
        for child in self._children:
            if child.name() == head:
                return child.node(rest) if rest else child
        return None

    def nodes(self) -> list:
        return list(self._children)

    def maxInputs(self) -> int:
        numbers = [int(n["number"].value()) for n in self._children if isinstance(n, Input)]
        return max(numbers) + 1 if numbers else 0

    def output(self):
        """The group's Output node (Nuke's Group.output()), or None."""
        return next((n for n in self._children if isinstance(n, Output)), None)

    def _compute(self, number, view):
        outputs = [n for n in self._children if isinstance(n, Output)]
        if not outputs:
            return self._upstream(0, number, view)
        return outputs[0]._render(number, view)


class Root(Group):
    _class = "Root"

    def __init__(self):
        super().__init__(None)
        self._knobs["name"]._value = "Root"
        self.addKnob(Int_Knob("first_frame", "first frame"))
        self.addKnob(Int_Knob("last_frame", "last frame"))
        self.addKnob(Int_Knob("frame", "frame"))
        self.addKnob(String_Knob("views", "views", "main #ffffff"))  # one "name colour" line per view
        self["first_frame"].setValue(1)
        self["last_frame"].setValue(100)
        self["frame"].setValue(1)

    def fullName(self):
        return "root"


class Input(Node):
    _class = "Input"
    _max_inputs = 0

    def __init__(self, parent):
        super().__init__(parent)
        self.addKnob(Int_Knob("number", "number"))

    def _compute(self, number, view):
        source = self._parent.input(int(self["number"].value()))
        return source._render(number, view) if source is not None else _Image()

    def firstFrame(self):
        source = self._parent.input(int(self["number"].value()))
        return source.firstFrame() if source is not None else int(root()["first_frame"].value())

    def lastFrame(self):
        source = self._parent.input(int(self["number"].value()))
        return source.lastFrame() if source is not None else int(root()["last_frame"].value())


class Output(Node):
    _class = "Output"


_EXR_CHANNELS = {"R": "rgba.red", "G": "rgba.green", "B": "rgba.blue", "A": "rgba.alpha"}
_MASKS = {"rgb": ["rgba.red", "rgba.green", "rgba.blue"], "rgba": list(_EXR_CHANNELS.values()),
          "alpha": ["rgba.alpha"]}


def _file_name(pattern: str, number: int, view: str) -> str:
    """Nuke's file name substitutions: #### and %04d for the frame, %V / %v for the view."""
    def digits(match):
        width = len(match.group(1)) if match.group(1) else int(match.group(2) or 0)
        return f"{number:0{width}d}"

    path = re.sub(r"(#+)|%(0?\d*)d", digits, pattern)
    return path.replace("%V", view).replace("%v", view[:1])


class Read(Node):
    _class = "Read"
    _max_inputs = 0

    def __init__(self, parent):
        super().__init__(parent)
        self.addKnob(File_Knob("file", "file"))
        self.addKnob(Int_Knob("first", "first"))
        self.addKnob(Int_Knob("last", "last"))
        self["first"].setValue(1)
        self["last"].setValue(1)
        for name in ("before", "after"):
            self.addKnob(Enumeration_Knob(name, name, ["hold", "loop", "bounce", "black"]))
        self.addKnob(Enumeration_Knob("on_error", "missing frames", ["error", "black", "checkerboard",
                                                                    "nearest frame"]))
        self.addKnob(Boolean_Knob("raw", "raw data"))
        self.addKnob(String_Knob("colorspace", "colorspace", "default"))
        self.addKnob(Script_Knob("reload", "reload"))

    def firstFrame(self):
        return int(self["first"].value())

    def lastFrame(self):
        return int(self["last"].value())

    def _compute(self, number, view):
        first, last = self.firstFrame(), self.lastFrame()
        if number < first or number > last:
            if self["before" if number < first else "after"].value() == "black":
                return _Image()
            number = min(max(number, first), last)
        path = _file_name(self["file"].value(), number, view)
        if not os.path.exists(path):
            if self["on_error"].value() == "black":
                return _Image()
            raise RuntimeError(f"{self.name()}: Read error: {path}: No such file or directory")
        return _read_exr(path)


def _read_exr(path: str) -> _Image:
    import OpenImageIO as oiio

    image = oiio.ImageInput.open(path)
    if image is None:
        raise RuntimeError(f"cannot read {path}: {oiio.geterror()}")
    spec = image.spec()
    pixels = image.read_image(0, 0, 0, spec.nchannels, oiio.FLOAT)
    image.close()
    pixels = np.asarray(pixels, np.float32).reshape(spec.height, spec.width, spec.nchannels)
    frame_ = np.zeros((spec.full_height, spec.full_width, spec.nchannels), np.float32)
    left, top = max(spec.x, spec.full_x), max(spec.y, spec.full_y)
    right = min(spec.x + spec.width, spec.full_x + spec.full_width)
    bottom = min(spec.y + spec.height, spec.full_y + spec.full_height)
    if left < right and top < bottom:
        frame_[top - spec.full_y:bottom - spec.full_y, left - spec.full_x:right - spec.full_x] = \
            pixels[top - spec.y:bottom - spec.y, left - spec.x:right - spec.x]
    channels = {_EXR_CHANNELS.get(name, name): frame_[..., i].copy() for i, name in enumerate(spec.channelnames)}
    return _Image((spec.full_height, spec.full_width), channels)


class Write(Node):
    _class = "Write"
    _COMPRESSION = {"none": "none", "Zip (1 scanline)": "zips", "Zip (16 scanlines)": "zip",
                    "PIZ Wavelet (32 scanlines)": "piz", "RLE": "rle", "B44": "b44", "DWAA": "dwaa", "DWAB": "dwab"}

    def __init__(self, parent):
        super().__init__(parent)
        self.addKnob(File_Knob("file", "file"))
        self.addKnob(Enumeration_Knob("file_type", "file type", [" ", "exr", "png", "tiff", "jpeg"]))
        self.addKnob(Enumeration_Knob("datatype", "datatype", ["16 bit half", "32 bit float"]))
        self.addKnob(Enumeration_Knob("compression", "compression", list(self._COMPRESSION)))
        self["compression"].setValue("Zip (1 scanline)")  # Nuke's default for EXR
        self.addKnob(Channel_Knob("channels", "channels", "rgb"))
        self.addKnob(Boolean_Knob("raw", "raw data"))
        self.addKnob(String_Knob("colorspace", "colorspace", "default"))
        self.addKnob(String_Knob("views", "views", "main"))
        self.addKnob(Boolean_Knob("create_directories", "create directories"))

    def _write(self, number: int, view: str) -> str:
        if self["disable"].value():
            raise RuntimeError(f"{self.name()}: cannot execute a disabled Write")
        if self.input(0) is None:
            raise RuntimeError(f"{self.name()}: nothing is connected to the input")
        if self["file_type"].value() != "exr":
            raise RuntimeError(f"{self.name()}: the stand-in writes EXR only")
        import OpenImageIO as oiio

        image = self._upstream(0, number, view)
        if image.size is None:
            raise RuntimeError(f"{self.name()}: the input has no image")
        mask = self["channels"].value()
        names = _MASKS.get(mask) or (sorted(image.channels) if mask == "all" else
                                     [c for c in image.channels if c.split(".")[0] == mask])
        path = _file_name(self["file"].value(), number, view)
        folder = os.path.dirname(path) or "."
        if not os.path.isdir(folder):
            if not self["create_directories"].value():
                raise RuntimeError(f"{self.name()}: cannot write {path}: No such file or directory")
            os.makedirs(folder)
        pixels = np.stack([image.get(c) for c in names], axis=-1)
        half = self["datatype"].value() == "16 bit half"
        spec = oiio.ImageSpec(image.size[1], image.size[0], len(names), oiio.HALF if half else oiio.FLOAT)
        spec.channelnames = tuple({v: k for k, v in _EXR_CHANNELS.items()}.get(c, c) for c in names)
        spec.attribute("compression", self._COMPRESSION[self["compression"].value()])
        temporary = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}.exr")
        out = oiio.ImageOutput.create(temporary)
        if not (out.open(temporary, spec) and out.write_image(np.ascontiguousarray(pixels))):
            raise RuntimeError(f"{self.name()}: cannot write {path}: {out.geterror()}")
        out.close()
        os.replace(temporary, path)
        return path


class Copy(Node):
    _class = "Copy"
    _max_inputs = 2

    # Nuke's Copy copies up to four channels, knobs from0..from3 to to0..to3 (Foundry's Copy
    # reference page); a pair left at "none" copies nothing.
    PAIRS = 4

    def __init__(self, parent):
        super().__init__(parent)
        for index in range(self.PAIRS):
            default = "rgba.alpha" if index == 0 else "none"
            self.addKnob(Channel_Knob(f"from{index}", "from", default))
            self.addKnob(Channel_Knob(f"to{index}", "to", default))

    def _compute(self, number, view):
        b = self._upstream(0, number, view)
        a = self._upstream(1, number, view)
        out = _Image(b.size, b.channels)
        if b.size is not None:
            for index in range(self.PAIRS):
                source, target = self[f"from{index}"].value(), self[f"to{index}"].value()
                if source == "none" or target == "none":
                    continue
                value = a.get(source, b.size)
                if value.shape != tuple(b.size):  # A of another format: Nuke copies where both have pixels
                    fitted = np.zeros(b.size, np.float32)
                    h, w = min(value.shape[0], b.size[0]), min(value.shape[1], b.size[1])
                    fitted[:h, :w] = value[:h, :w]
                    value = fitted
                out.channels[target] = value
        return out


class Assert(Node):
    """Errors with ``message`` on the frames where ``expression`` is false (Nuke's Other > Assert)."""
    _class = "Assert"

    def __init__(self, parent):
        super().__init__(parent)
        self.addKnob(Int_Knob("expression", "expression"))
        self["expression"].setValue(1)
        self.addKnob(String_Knob("message", "message"))

    def _compute(self, number, view):
        if not self["expression"].evaluate(number):
            raise RuntimeError(f"{self.name()}: {self['message'].value() or 'assertion failed'}")
        return self._upstream(0, number, view)


def _evaluate(expression: str, number: int) -> bool:
    """Nuke expression syntax for the operators the node uses: ! && || == != < <= > >=, frame, numbers."""
    if not re.fullmatch(r"[\sframe0-9.!&|=<>()-]*", expression):
        raise RuntimeError(f"the stand-in cannot evaluate {expression!r}")
    python = expression.replace("&&", " and ").replace("||", " or ")
    python = re.sub(r"!(?!=)", " not ", python)
    return bool(eval(python, {"__builtins__": {}}, {"frame": number}))  # noqa: S307 (checked above)


class Gizmo(Group):
    """A gizmo is a Group whose contents come from a file (Nuke's Gizmo derives from Group)."""
    _class = "Gizmo"


_CLASSES = {cls._class: cls for cls in (Group, Gizmo, Input, Output, Read, Write, Copy, Assert)}


# ---- the script ---------------------------------------------------------------------------------------

_root: Root | None = None


def _root_node() -> Root:
    global _root
    if _root is None:
        _root = Root()
    return _root


def _stack() -> list:
    if not hasattr(_context, "groups"):
        _context.groups = [_root_node()]
    return _context.groups


class _this:
    def __init__(self, node, knob=None):
        self.node, self.knob = node, knob

    def __enter__(self):
        if not hasattr(_context, "this"):
            _context.this = []
        _context.this.append((self.node, self.knob))

    def __exit__(self, *exc):
        _context.this.pop()


def root() -> Root:
    return _root_node()


def scriptClear() -> None:
    global _root
    _root = Root()
    _context.groups = [_root]


def thisGroup():
    return _stack()[-1]


def thisNode():
    stack = getattr(_context, "this", [])
    return stack[-1][0] if stack else root()


def thisKnob():
    stack = getattr(_context, "this", [])
    return stack[-1][1] if stack else None


def thisView() -> str:
    """The view being rendered (inside nuke.execute), else the first view."""
    return getattr(_context, "view", None) or views()[0]


def _script_views() -> list[str]:
    """The first word of each line of the root's views knob."""
    return [line.split()[0] for line in root()["views"].value().splitlines() if line.strip()]


views = _script_views  # nuke.views(); execute() has an argument of that name


def frame(number=None) -> int:
    if number is not None:
        root()["frame"].setValue(int(number))
    return int(root()["frame"].value())


def _refuse_while_rendering(what: str) -> None:
    """Nuke refuses renders and edits from inside a render callback."""
    if getattr(_context, "in_render_callback", 0):
        raise RuntimeError(f"cannot {what}: I'm already executing something else")


def _create(class_name: str, knobs: dict):
    _refuse_while_rendering(f"create a {class_name} node")
    cls = _CLASSES.get(class_name)
    if cls is None:
        raise RuntimeError(f"{class_name}: unknown command")
    group = thisGroup()
    node = cls(group)
    group._children.append(node)
    node.setName(knobs.pop("name", f"{class_name}1"))
    for name, value in knobs.items():
        knob = node.knob(name)
        if knob is None:
            raise ValueError(f"{class_name} has no knob named {name}")
        knob.setValue(value)
    return node


class _Nodes:
    def __getattr__(self, class_name):
        if class_name not in _CLASSES:
            raise AttributeError(class_name)
        return lambda **knobs: _create(class_name, dict(knobs))


nodes = _Nodes()


def toNode(name: str):
    return root().node(name) if name not in ("root", "Root") else root()


def allNodes(filter: str | None = None, group=None, recurseGroups: bool = False) -> list:
    found = []
    for node in (group or thisGroup())._children:
        if filter is None or node.Class() == filter:
            found.append(node)
        if recurseGroups and isinstance(node, Group):
            found += allNodes(filter, node, True)
    return found


def selectedNodes() -> list:
    return [n for n in thisGroup()._children if n.isSelected()]


def selectedNode():
    chosen = selectedNodes()
    if not chosen:
        raise ValueError("no node selected")
    return chosen[-1]


class Layer:
    def __init__(self, name: str, channels: list | None = None):
        self._name = name
        _layers[name] = list(channels or [])

    def name(self) -> str:
        return self._name

    def channels(self) -> list[str]:
        return list(_layers.get(self._name, []))


def layers(node=None) -> list[str]:
    return ["rgb", "rgba", "alpha", *_layers]


# ---- rendering ---------------------------------------------------------------------------------------

def addBeforeFrameRender(call, args=(), kwargs={}, nodeClass: str = "Write") -> None:
    _callbacks["beforeFrameRender"].append((call, tuple(args), dict(kwargs), nodeClass))


def execute(node_or_name, start: int, end: int, incr: int = 1, views: list | None = None,
            continueOnError: bool = False) -> None:
    """Render frames start..end of a Write: for each frame, the beforeFrameRender callbacks run (with
    nuke.thisNode() the Write and nuke.frame() the frame), then the frame is computed and written.
    An exception in a callback stops the render, as in a command-line render."""
    _refuse_while_rendering("execute a node")
    views = views or _script_views()  # Nuke's default: every view of the script
    node = toNode(node_or_name) if isinstance(node_or_name, str) else node_or_name
    if node is None or not isinstance(node, Write):
        raise ValueError(f"{node_or_name} is not a Write node")
    if node["disable"].value():
        raise RuntimeError(f"{node.name()}: cannot execute a disabled Write")
    saved, saved_view = frame(), getattr(_context, "view", None)  # a nested execute restores the outer one's
    try:
        for number in range(int(start), int(end) + 1, int(incr)):
            frame(number)
            for view in views:
                _context.view = view
                for call, args, kwargs, node_class in list(_callbacks["beforeFrameRender"]):
                    if node_class in (None, "", node.Class()):
                        _context.in_render_callback = getattr(_context, "in_render_callback", 0) + 1
                        try:
                            with _this(node):
                                call(*args, **kwargs)
                        finally:
                            _context.in_render_callback -= 1
                node._write(number, view)
    finally:
        _context.view = saved_view
        frame(saved)


# ---- threads, progress, messages -------------------------------------------------------------------------

def executeInMainThread(call, args=(), kwargs={}) -> None:
    """Queues ``call`` for the main thread; it runs when the main thread is idle (in the stand-in:
    inside ``standin_run_until``)."""
    standin_main_thread_calls.append((getattr(call, "__name__", repr(call)), threading.current_thread().name))
    args = args if isinstance(args, tuple) else (args,)
    _queue.put((call, args, dict(kwargs)))


def standin_run_until(done, timeout: float = 60.0) -> None:
    """The main thread's event loop: runs queued calls until ``done()`` is true and nothing is queued."""
    assert threading.current_thread() is _main_thread, "the event loop runs in the main thread"
    deadline = time.monotonic() + timeout
    while True:
        try:
            call, args, kwargs = _queue.get(timeout=0.01)
        except queue.Empty:
            if done():
                return
            if time.monotonic() > deadline:
                raise TimeoutError("standin_run_until: timed out")
            continue
        call(*args, **kwargs)  # an exception here is one Nuke would print from its event loop


class ProgressTask:
    """A cancellable progress window. ``standin_cancel_after``: isCancelled() turns true after that many calls."""
    instances: list = []
    standin_cancel_after: int | None = None

    def __init__(self, message: str):
        self.title, self.message, self.progress, self._asked = message, "", 0, 0
        self.thread = threading.current_thread().name
        ProgressTask.instances.append(self)

    def setMessage(self, message: str) -> None:
        self.message = message

    def setProgress(self, progress: int) -> None:
        self.progress = int(progress)

    def isCancelled(self) -> bool:
        self._asked += 1
        limit = ProgressTask.standin_cancel_after
        return limit is not None and self._asked > limit


def message(text: str) -> None:
    messages.append(text)
    if not GUI:
        print(text)


# ---- menus and start-up ------------------------------------------------------------------------------------

class MenuItem:
    def __init__(self, name, command=None):
        self._name, self._command, self.items = name, command, []

    def name(self) -> str:
        return self._name

    def script(self):
        return self._command

    def invoke(self):
        if callable(self._command):
            return self._command()
        scope = {"nuke": sys.modules[__name__]}
        exec(compile(self._command, f"<menu {self._name}>", "exec"), scope)

    def addMenu(self, name, icon=None, tooltip=None, index=-1, **_):
        existing = self.findItem(name)
        if existing is None:
            existing = MenuItem(name)
            self.items.append(existing)
        return existing

    def addCommand(self, name, command=None, shortcut="", icon="", tooltip="", index=-1, **_):
        item = MenuItem(name, command)
        self.items.append(item)
        return item

    def findItem(self, name):
        head, _, rest = name.partition("/")
        for item in self.items:
            if item.name() == head:
                return item.findItem(rest) if rest else item
        return None


def menu(name: str) -> MenuItem:
    return _menus.setdefault(name, MenuItem(name))


def pluginAddPath(path: str, addToSysPath: bool = True) -> None:
    """Adds a plug-in folder: its init.py runs after the current one, its menu.py at GUI start-up."""
    path = os.path.abspath(os.path.expanduser(path))
    if path not in _plugin_paths:
        _plugin_paths.append(path)
        if addToSysPath and path not in sys.path:
            sys.path.insert(0, path)


def standin_startup(nuke_path: str) -> None:
    """What Nuke does at start-up for a NUKE_PATH folder: its init.py, then the init.py of each plug-in
    path added meanwhile; then, in the GUI, the menu.py files in the same order."""
    pluginAddPath(nuke_path)
    done = 0
    while done < len(_plugin_paths):
        _run_file(os.path.join(_plugin_paths[done], "init.py"))
        done += 1
    if GUI:
        for folder in list(_plugin_paths):
            _run_file(os.path.join(folder, "menu.py"))


def _run_file(path: str) -> None:
    if os.path.exists(path):
        with open(path) as handle:
            exec(compile(handle.read(), path, "exec"), {"__name__": "__main__", "nuke": sys.modules[__name__]})


def standin_reset() -> None:
    """A fresh session: empty script, no callbacks, menus, messages or plug-in paths."""
    scriptClear()
    messages.clear()
    standin_main_thread_calls.clear()
    _callbacks["beforeFrameRender"].clear()
    _layers.clear()
    _menus.clear()
    for path in _plugin_paths:
        if path in sys.path:
            sys.path.remove(path)
    _plugin_paths.clear()
    ProgressTask.instances.clear()
    ProgressTask.standin_cancel_after = None

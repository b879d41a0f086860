"""A data-only pickle machine for untrusted checkpoints, bounded by construction.

Python's own unpickler runs whatever callables a file names, resizes its memo to any index a file asks
for and recurses through nested objects. This one executes the binary opcodes a `torch.save` pickle
uses (protocols 2 to 5) in one pass over the bytes, nothing else:

- globals resolve only through the caller's `allowed` table; any other name is refused, by name;
- every opcode creates at most one object, so the object count, the memo and the stack are bounded
  by the number of opcodes, itself capped (MAX_OPCODES, a few hundred MB of Python objects at most);
  the memo is a dict, so `LONG_BINPUT 2**27` costs one entry, not 2**27; strings are capped;
- nothing here recurses or hashes a container: dict keys and set items must be atoms (str, bytes, int,
  float, bool, None), and errors name types and byte positions, never repr() a decoded object (the repr
  of a shared or self-referencing object graph can be exponential).

Every failure is a `PickleError` with one line that names the opcode and its byte position.
"""

from __future__ import annotations

import struct
from typing import Callable, Dict, Tuple


class PickleError(ValueError):
    """A pickle stream that is corrupt, or asks for something a checkpoint never needs."""


MAX_STRING = 1 << 20      # keys and global names are short; a longer string only inflates memory
MAX_OPCODES = 2_000_000   # ~150 bytes of Python objects each at most; a state_dict needs ~25 per tensor


class _Mark:
    """The stack marker of MARK; never escapes the machine."""


MARK = _Mark()
_ATOMS = (str, bytes, int, float, bool, type(None))
_OPCODE_NAMES = {
    b"\x80": "PROTO", b"\x95": "FRAME", b".": "STOP", b"(": "MARK", b"0": "POP", b"1": "POP_MARK",
    b"}": "EMPTY_DICT", b"]": "EMPTY_LIST", b")": "EMPTY_TUPLE", b"d": "DICT", b"l": "LIST", b"t": "TUPLE",
    b"\x85": "TUPLE1", b"\x86": "TUPLE2", b"\x87": "TUPLE3", b"s": "SETITEM", b"u": "SETITEMS",
    b"a": "APPEND", b"e": "APPENDS", b"J": "BININT", b"K": "BININT1", b"M": "BININT2", b"\x8a": "LONG1",
    b"\x8b": "LONG4", b"N": "NONE", b"\x88": "NEWTRUE", b"\x89": "NEWFALSE", b"G": "BINFLOAT",
    b"X": "BINUNICODE", b"\x8c": "SHORT_BINUNICODE", b"\x8d": "BINUNICODE8", b"T": "BINSTRING",
    b"U": "SHORT_BINSTRING", b"B": "BINBYTES", b"C": "SHORT_BINBYTES", b"\x8e": "BINBYTES8",
    b"c": "GLOBAL", b"\x93": "STACK_GLOBAL", b"q": "BINPUT", b"r": "LONG_BINPUT", b"\x94": "MEMOIZE",
    b"h": "BINGET", b"j": "LONG_BINGET", b"Q": "BINPERSID", b"R": "REDUCE", b"b": "BUILD",
    b"\x81": "NEWOBJ", b"\x8f": "EMPTY_SET", b"\x90": "ADDITEMS", b"\x91": "FROZENSET",
}


def load(data, pos: int, allowed: Dict[Tuple[str, str], object],
         persistent_load: Callable[[tuple], object]) -> Tuple[object, int]:
    """Run one pickle from `data[pos:]`; returns (the object, the position after its STOP).

    `allowed` maps (module, name) to what GLOBAL pushes: a function REDUCE may call (one marked
    `_pickle_callable = True`, called with a tuple of decoded objects), a class stand-in NEWOBJ may
    instantiate (one with a `_pickle_new(args)` method, written by the caller), or an inert value (a storage
    type). BUILD is accepted only on objects whose type defines `_pickle_setstate` (written by the caller).
    """
    view = memoryview(data)
    end = len(view)
    stack: list = []
    marks: list = []
    memo: dict = {}

    def fail(msg: str):
        raise PickleError(f"corrupt checkpoint pickle at byte {op_at}: {msg}")

    def take(n: int):
        nonlocal pos
        if n < 0 or pos + n > end:
            fail(f"{_OPCODE_NAMES.get(op, repr(op))} needs {n} bytes, the stream ends after {end - pos}")
        out = view[pos:pos + n]
        pos += n
        return out

    def pop():
        if not stack or stack[-1] is MARK:
            fail(f"{_OPCODE_NAMES[op]} on an empty stack")
        return stack.pop()

    def pop_mark() -> list:
        if not marks:
            fail(f"{_OPCODE_NAMES[op]} without a MARK")
        at = marks.pop()
        items = stack[at + 1:]
        del stack[at:]
        return items

    def short(raw):
        if len(raw) > MAX_STRING:
            fail(f"a string of {len(raw)} bytes (at most {MAX_STRING} are read)")
        return raw

    def text(raw) -> str:
        try:
            return str(short(raw), "utf-8")
        except UnicodeDecodeError:
            fail("a string that is not UTF-8")

    def key_ok(k):
        if not isinstance(k, _ATOMS):
            fail(f"a dict key or set item of type {type(k).__name__} (a checkpoint's keys are strings)")
        return k

    def top(kind, what):
        if not stack or not isinstance(stack[-1], kind):
            fail(f"{what} on a {type(stack[-1]).__name__ if stack else 'missing'} object")
        return stack[-1]

    for _ in range(MAX_OPCODES):
        op_at = pos
        if pos >= end:
            raise PickleError(f"corrupt checkpoint pickle: the stream ends at byte {end} before its STOP")
        op = bytes(view[pos:pos + 1])
        pos += 1
        if op == b".":
            if len(stack) != 1 or marks:
                fail(f"STOP with {len(stack)} objects on the stack (expected 1)")
            return stack[0], pos
        elif op == b"\x80":
            proto = take(1)[0]
            if proto > 5:
                fail(f"pickle protocol {proto} (at most 5 is known)")
        elif op == b"\x95":
            take(8)
        elif op == b"(":
            marks.append(len(stack))
            stack.append(MARK)
        elif op == b"0":
            pop()
        elif op == b"1":
            pop_mark()
        elif op == b"}":
            stack.append({})
        elif op == b"]":
            stack.append([])
        elif op == b")":
            stack.append(())
        elif op == b"d":
            items = pop_mark()
            if len(items) % 2:
                fail("DICT with an odd number of items")
            stack.append({key_ok(items[i]): items[i + 1] for i in range(0, len(items), 2)})
        elif op == b"l":
            stack.append(pop_mark())
        elif op == b"t":
            stack.append(tuple(pop_mark()))
        elif op in (b"\x85", b"\x86", b"\x87"):
            n = op[0] - 0x84
            if len(stack) < n or any(s is MARK for s in stack[-n:]):
                fail(f"{_OPCODE_NAMES[op]} needs {n} objects")
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif op == b"s":
            v = pop()
            k = key_ok(pop())
            top(dict, "SETITEM")[k] = v
        elif op == b"u":
            items = pop_mark()
            if len(items) % 2:
                fail("SETITEMS with an odd number of items")
            d = top(dict, "SETITEMS")
            for i in range(0, len(items), 2):
                d[key_ok(items[i])] = items[i + 1]
        elif op == b"a":
            v = pop()
            top(list, "APPEND").append(v)
        elif op == b"e":
            items = pop_mark()
            top(list, "APPENDS").extend(items)
        elif op == b"J":
            stack.append(struct.unpack("<i", take(4))[0])
        elif op == b"K":
            stack.append(take(1)[0])
        elif op == b"M":
            stack.append(struct.unpack("<H", take(2))[0])
        elif op == b"\x8a":
            stack.append(int.from_bytes(take(take(1)[0]), "little", signed=True))
        elif op == b"\x8b":
            stack.append(int.from_bytes(short(take(struct.unpack("<i", take(4))[0])), "little", signed=True))
        elif op == b"N":
            stack.append(None)
        elif op == b"\x88":
            stack.append(True)
        elif op == b"\x89":
            stack.append(False)
        elif op == b"G":
            stack.append(struct.unpack(">d", take(8))[0])
        elif op == b"X":
            stack.append(text(take(struct.unpack("<I", take(4))[0])))
        elif op == b"\x8c":
            stack.append(text(take(take(1)[0])))
        elif op == b"\x8d":
            stack.append(text(take(struct.unpack("<Q", take(8))[0])))
        elif op == b"T":
            stack.append(str(short(take(struct.unpack("<i", take(4))[0])), "latin-1"))
        elif op == b"U":
            stack.append(str(take(take(1)[0]), "latin-1"))
        elif op == b"B":
            stack.append(bytes(short(take(struct.unpack("<I", take(4))[0]))))
        elif op == b"C":
            stack.append(bytes(take(take(1)[0])))
        elif op == b"\x8e":
            stack.append(bytes(short(take(struct.unpack("<Q", take(8))[0]))))
        elif op in (b"c", b"\x93"):
            if op == b"c":
                nl1 = data.find(b"\n", pos, min(end, pos + 256))
                nl2 = data.find(b"\n", nl1 + 1, min(end, nl1 + 257)) if nl1 >= 0 else -1
                if nl2 < 0:
                    fail("GLOBAL without two newline-terminated names")
                module, name = text(view[pos:nl1]), text(view[nl1 + 1:nl2])
                pos = nl2 + 1
            else:
                name, module = pop(), pop()
                if not (isinstance(module, str) and isinstance(name, str)):
                    fail("STACK_GLOBAL on names that are not strings")
            if (module, name) not in allowed:
                raise PickleError(
                    f"refusing to load global '{module[:80]}.{name[:80]}': a state_dict needs only tensors "
                    "and dicts, and this file asks to run other code")
            stack.append(allowed[(module, name)])
        elif op in (b"q", b"r", b"\x94"):
            if not stack or stack[-1] is MARK:
                fail(f"{_OPCODE_NAMES[op]} on an empty stack")
            idx = (take(1)[0] if op == b"q" else struct.unpack("<I", take(4))[0] if op == b"r"
                   else len(memo))
            memo[idx] = stack[-1]
        elif op in (b"h", b"j"):
            idx = take(1)[0] if op == b"h" else struct.unpack("<I", take(4))[0]
            if idx not in memo:
                fail(f"{_OPCODE_NAMES[op]} of memo entry {idx}, which was never stored")
            stack.append(memo[idx])
        elif op == b"Q":
            pid = pop()
            if not isinstance(pid, tuple):
                fail(f"a persistent id of type {type(pid).__name__}")
            stack.append(persistent_load(pid))
        elif op == b"R":
            args = pop()
            func = pop()
            if not isinstance(args, tuple):
                fail(f"REDUCE with arguments of type {type(args).__name__}")
            if not (callable(func) and getattr(func, "_pickle_callable", False)):
                fail(f"REDUCE of a {type(func).__name__}, which is not a function this reader allows")
            stack.append(func(*args))
        elif op == b"\x81":
            args = pop()
            cls = pop()
            new = getattr(cls, "_pickle_new", None)
            if not isinstance(args, tuple) or new is None:
                fail(f"NEWOBJ of a {type(cls).__name__}, which is not a class this reader allows")
            stack.append(new(args))
        elif op == b"\x8f":
            stack.append(set())
        elif op in (b"\x90", b"\x91"):
            items = [key_ok(k) for k in pop_mark()]
            if op == b"\x91":
                stack.append(frozenset(items))
            else:
                top(set, "ADDITEMS").update(items)
        elif op == b"b":
            state = pop()
            obj = stack[-1] if stack else None
            setstate = getattr(type(obj), "_pickle_setstate", None)
            if setstate is None:
                fail(f"BUILD on a {type(obj).__name__}")
            setstate(obj, state)
        else:
            fail(f"unsupported pickle opcode {op!r} (a torch state_dict does not use it)")
    raise PickleError(f"corrupt checkpoint pickle: more than {MAX_OPCODES} opcodes (a state_dict needs far fewer)")

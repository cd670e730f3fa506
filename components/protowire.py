"""The protobuf wire format, by hand, for the few messages this project writes or reads without their generated
classes: tf.train.Example (components/convert/schema.py: Beam workers encode records without TensorFlow) and TF
Serving's PredictionLog warm-up records (components/warmup.py: TF 2.21 ships no tensorflow_serving protos)."""

from __future__ import annotations


def varint(value: int) -> bytes:
    """A varint; negative int64s are ten-byte two's complement varints."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def fields(data: bytes) -> dict[int, list]:
    """field number -> its values, in order: ints for varints, bytes for length-delimited fields (fixed-width
    fields are skipped: no message read here has one that matters)."""
    found: dict[int, list] = {}
    at = 0
    while at < len(data):
        key, at = read_varint(data, at)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, at = read_varint(data, at)
        elif wire_type == 2:
            size, at = read_varint(data, at)
            if at + size > len(data):
                raise ValueError("truncated field")
            value, at = data[at:at + size], at + size
        elif wire_type in (1, 5):
            at += 8 if wire_type == 1 else 4
            continue
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        found.setdefault(number, []).append(value)
    return found

"""A corpus read as a stream, so that memory stays bounded whatever its size.

A corpus is one or more files read as one text (joined by the document separator, else by a
newline). It is read in blocks, decoded strictly as UTF-8, split into train and validation at a
document boundary, and cut into pieces only where a cut cannot change the tokens: encoding the
pieces one by one gives the ids that encoding the whole text at once would.
"""

import codecs
import itertools
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from lmzoo.errors import UserError

BLOCK_BYTES = 1 << 22

# Between a letter or digit and a space or punctuation mark (not an apostrophe, which starts
# contractions such as 's), no tokenizer here merges across: gpt2, cl100k_base and o200k_base
# pre-tokenize with regexes whose letter and number runs stop there, and byte-level BPE uses gpt2's.
# Cuts at line ends are not safe: gpt2 merges "\n\n" at the end of a piece but not before a word.
SAFE_CUT = re.compile(r"(?<=[^\W_])(?=[\s!-&(-/:-@\[-`{-~\u2000-\u206f\u3000-\u303f\uff01-\uff0f\uff1a-\uff20])")


class Corpus:
    """The bytes of `files`, joined, with readers for any byte range."""

    def __init__(self, files: list[Path], document_separator: str | None = None):
        self.files = files
        self.separator = document_separator
        joiner = (document_separator or "\n").encode("utf-8")
        self.parts: list[Path | bytes] = []
        for index, path in enumerate(files):
            self.parts += [joiner, path] if index else [path]
        self.sizes = [len(part) if isinstance(part, bytes) else part.stat().st_size for part in self.parts]
        self.size = sum(self.sizes)

    def blocks(self, start: int, stop: int) -> Iterator[bytes]:
        """The bytes in [start, stop), in blocks of at most BLOCK_BYTES."""
        offset = 0
        for part, size in zip(self.parts, self.sizes):
            low, high = max(start, offset) - offset, min(stop, offset + size) - offset
            offset += size
            if low >= high:
                continue
            if isinstance(part, bytes):
                yield part[low:high]
                continue
            with open(part, "rb") as file:
                file.seek(low)
                while low < high:
                    block = file.read(min(BLOCK_BYTES, high - low))
                    if not block:
                        raise UserError(f"{part} changed while it was read; prepare again")
                    low += len(block)
                    yield block

    def locate(self, offset: int) -> tuple[Path | bytes, int]:
        """The part (a file, or the joiner between two) holding a byte offset, and the offset within it."""
        for part, size in zip(self.parts, self.sizes):
            if offset < size:
                break
            offset -= size
        return part, offset

    def texts(self, start: int, stop: int, progress=None) -> Iterator[str]:
        """The text of bytes [start, stop); a byte that is not UTF-8 text is a UserError naming it."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        position = start
        # The empty block at the end flushes the decoder: a file may end inside a character.
        for block in itertools.chain(self.blocks(start, stop), [b""]):
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as error:
                path, at = self.locate(position - pending + error.start)
                raise UserError(f"{path} is not UTF-8 text (bad byte at offset {at}); convert it to UTF-8") from None
            if "\x00" in text:
                path, at = self.locate(position + block.index(b"\x00"))
                raise UserError(f"{path} looks binary (NUL byte at offset {at}); point data.path at text files")
            position += len(block)
            if progress is not None:
                progress.update(len(block))
            if text:
                yield text

    def split_offset(self, train_fraction: float) -> int:
        """Where validation starts: after the first document separator past the train fraction, else there."""
        return self.cut_at(int(self.size * train_fraction))

    def cut_at(self, target: int) -> int:
        """Where a split starting near byte `target` starts: after the first document separator from there, else
        there (not inside a character)."""
        if self.separator:
            separator = self.separator.encode("utf-8")
            tail, position = b"", target
            for block in self.blocks(target, self.size):
                window = tail + block
                found = window.find(separator)
                if found != -1:
                    return position - len(tail) + found + len(separator)
                tail = window[len(window) - len(separator) + 1 :]
                position += len(block)
        # Not inside a character: skip UTF-8 continuation bytes.
        head = b"".join(self.blocks(target, min(self.size, target + 4)))
        return target + len(head) - len(head.lstrip(bytes(range(0x80, 0xC0))))


def safe_cut(text: str, limit: int) -> int:
    """The last position in (0, limit] where `text` can be cut without changing its tokens, else `limit`."""
    for start in (max(0, limit - 4096), 0):
        last = None
        for last in SAFE_CUT.finditer(text, start, limit):
            pass
        if last is not None and last.start() > 0:
            return last.start()
    return limit


def pieces(texts: Iterable[str], separator: str | None, max_chars: int) -> Iterator[tuple[str, bool]]:
    """Cut a text stream into (piece, ends_document) of at most `max_chars` characters.

    With a separator, documents end at each separator, which is dropped, and at the end of the
    stream; whitespace-only documents are skipped. A document longer than `max_chars` comes in
    several pieces, cut at safe positions. Without one, the pieces just cover the text.
    """
    carry, started = "", False
    for text in texts:
        carry += text
        if separator:
            *documents, carry = carry.split(separator)
            for document in documents:
                if started or document.strip():
                    yield document, True
                started = False
        while len(carry) > max_chars:
            # A separator may begin at the end of the carry; never cut inside it.
            cut = safe_cut(carry, min(max_chars, len(carry) - len(separator or "")))
            yield carry[:cut], False
            carry, started = carry[cut:], True
    if separator and (started or carry.strip()):
        yield carry, True
    elif not separator and carry:
        yield carry, False

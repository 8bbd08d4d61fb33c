from lmzoo.data.module import TokenDataModule
from lmzoo.data.bins import prepare

__all__ = ["TokenDataModule", "prepare"]

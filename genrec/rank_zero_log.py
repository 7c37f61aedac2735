"""A logger that writes on global rank zero only, so DDP runs print one copy."""

from __future__ import annotations

import logging

from lightning.pytorch.utilities import rank_zero_only


class RankZeroLogger(logging.LoggerAdapter):
    def log(self, level: int, msg, *args, **kwargs) -> None:
        if rank_zero_only.rank == 0:
            self.logger.log(level, msg, *args, **kwargs)


def get_logger(name: str) -> RankZeroLogger:
    return RankZeroLogger(logging.getLogger(name), {})

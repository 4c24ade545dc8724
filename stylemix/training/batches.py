"""Which images each training micro-batch reads, deterministically from the seed (train@S).

Each epoch: a seeded permutation of every image `repeats` times, dealt in that order into batches of
one aspect-ratio bucket each (a batch goes out when it is full; a bucket's last, partial batch is
dropped, so every batch has one size and `train.batch_size` images). The batches are then shared
out in order: micro-batch m of step s goes to process r as batch (s * accumulation + m) * processes + r.
A pure function of (seed, epoch, step), so a resumed run draws what an unbroken one would.
"""
import torch

from stylemix import params


class Batches:
    def __init__(self, counts: list[int], cfg: params.Train, world: int = 1, rank: int = 0, repeats: int = 1):
        """`counts`: images per bucket, in the cache's row order."""
        self.cfg, self.world, self.rank, self.repeats = cfg, world, rank, repeats
        self.bucket_of = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        self.row_of = torch.cat([torch.arange(c) for c in counts])  # an image's row within its bucket
        full = sum(c * repeats // cfg.batch_size for c in counts)
        self.per_epoch = full // (world * cfg.gradient_accumulation)  # steps
        self._epoch: tuple[int, list] | None = None

    def epoch(self, epoch: int) -> list[tuple[int, list[int]]]:
        """Every full batch of `epoch`: (bucket index, rows in that bucket)."""
        if self._epoch is None or self._epoch[0] != epoch:
            n = len(self.bucket_of)
            order = torch.randperm(n * self.repeats, generator=torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)) % n
            pending: dict[int, list[int]] = {}
            dealt = []
            for image in order.tolist():
                bucket = int(self.bucket_of[image])
                pending.setdefault(bucket, []).append(int(self.row_of[image]))
                if len(pending[bucket]) == self.cfg.batch_size:
                    dealt.append((bucket, pending.pop(bucket)))
            self._epoch = (epoch, dealt)
        return self._epoch[1]

    def __call__(self, step: int, micro: int) -> tuple[int, list[int]]:
        """This process's (bucket index, rows) for micro-batch `micro` of `step`."""
        epoch, within = divmod(step, self.per_epoch)
        return self.epoch(epoch)[(within * self.cfg.gradient_accumulation + micro) * self.world + self.rank]

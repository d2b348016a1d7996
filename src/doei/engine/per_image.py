"""One resumable, rank-sharded, per-image job: the loop behind CAM generation, the random walk and
segmentation inference.

:meth:`PerImageJob.run` is fixed (the template); a job says only what is particular to it:

* :meth:`~PerImageJob.is_done` — whether image ``i``'s outputs all exist (default: every path of
  :meth:`~PerImageJob.outputs` is a file), so an interrupted run resumes at the first missing image;
* :meth:`~PerImageJob.process` — compute and write image ``i``'s files (atomically), returning the fields
  of its log record (or :meth:`~PerImageJob.iterate` for jobs that batch several images per forward);
* optionally :meth:`~PerImageJob.start_fields`, :meth:`~PerImageJob.prepare` (load the model: called on
  every rank when any image is left, so a bad checkpoint fails every rank alike), :meth:`~PerImageJob.finish`
  (drain a worker pool; returns numbers to sum over ranks) and :meth:`~PerImageJob.close`.

What run() does, in order: take the folder's one-writer lock (rank 0); list the images left to do;
barrier (every rank has the same list before anything is written); rank 0 logs ``start``; each rank takes
``todo[rank::world]`` and processes its share, logging one ``image`` record per image (with its rank under
torchrun); an all-reduce sums the counts (which also waits for every rank); rank 0 logs ``end``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from doei.engine import distributed as dist_util
from doei.errors import DoeiError
from doei.utils.io import append_jsonl
from doei.utils.outdir import check_out_dir, folder_lock


def first_n(records: list, limit: int | None, flag: str = "--limit") -> list:
    """``records[:limit]`` (all with ``None``); a negative ``limit`` is a one-line DoeiError (``[:-1]`` would
    silently drop the last images)."""
    if limit is not None and limit < 0:
        raise DoeiError(f"{flag} {limit}: expected a number of images >= 0")
    return records if limit is None else records[:limit]


def first_images(ds, limit: int | None, flag: str = "limit"):
    """The dataset of ``ds``'s first ``limit`` images (``ds`` itself with ``None``): a capped (smoke) run reads
    only these, in every stage, so each stage finds the files the one before it wrote."""
    if limit is None:
        return ds
    return ds.subset(first_n(ds.ids, limit, flag))


class PerImageJob:
    """Override :meth:`process` (or :meth:`iterate`) and :meth:`outputs`; call :meth:`run`."""

    desc = "images"          # progress-bar label
    log_name = "log.jsonl"   # the JSONL log inside ``out``
    what = "output folder"   # what the folder is, for the lock's message

    def __init__(self, out: str | Path, n_images: int, device: str = "cpu", progress: bool = True,
                 option: str = "out_dir") -> None:
        self.out = check_out_dir(out, option)
        self.n_images = n_images
        self.device_name = device
        self.progress = progress
        self.rank, self.world = 0, 1
        self.device = torch.device(device)

    # ---------------------------------------------------------------- hooks
    def outputs(self, i: int) -> list[Path]:
        """Every file image ``i`` writes."""
        raise NotImplementedError

    def is_done(self, i: int) -> bool:
        return all(p.is_file() for p in self.outputs(i))

    def start_fields(self, todo: list[int]) -> dict:
        """Extra fields of the ``start`` record (rank 0 only; called after the barrier)."""
        return {}

    def prepare(self) -> None:
        """Called on every rank before processing, when any image is left to do."""

    def process(self, i: int) -> dict:
        """Compute and write image ``i``; return its ``image`` log record's fields (``id`` first)."""
        raise NotImplementedError

    def iterate(self, mine: list[int]) -> Iterator[dict]:
        """Yield one log-record dict per processed image of ``mine`` (default: :meth:`process` each)."""
        for i in mine:
            yield self.process(i)

    def finish(self) -> dict[str, float]:
        """After this rank's images: numbers to sum over ranks into the summary (e.g. CRF seconds)."""
        return {}

    def close(self) -> None:
        """Always called at the end (also on error): release pools and the like."""

    # ---------------------------------------------------------------- the fixed loop
    def log(self, record: dict) -> None:
        """Append ``record`` (+ this rank under torchrun) to the job's log."""
        append_jsonl(self.out / self.log_name, {**record, **({"rank": self.rank} if self.world > 1 else {})})

    def run(self) -> dict:
        """Run the job; returns ``{"images", "computed", "skipped", "seconds", "out_dir", "processes", ...}``
        on every rank (counts and :meth:`finish` numbers summed over ranks)."""
        with folder_lock(self.out, self.what):
            try:
                return self._run()
            finally:
                self.close()

    def _run(self) -> dict:
        self.rank, self.world = dist_util.init_from_env(self.device.type)
        self.device = dist_util.device_for(self.device)      # cuda -> cuda:LOCAL_RANK with several ranks
        todo = [i for i in range(self.n_images) if not self.is_done(i)]
        dist_util.barrier()                                   # every rank has the same todo list
        self.out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        if self.rank == 0:
            append_jsonl(self.out / self.log_name, {"event": "start", "time": t0, "images": self.n_images,
                                                    "todo": len(todo), **self.start_fields(todo),
                                                    **({"processes": self.world} if self.world > 1 else {})})
        mine = dist_util.shard(todo, self.rank, self.world)
        if todo:
            self.prepare()
        with tqdm(total=len(mine), desc=self.desc, unit="img", disable=not self.progress or self.rank != 0,
                  dynamic_ncols=True) as bar:
            for record in self.iterate(mine):
                self.log({"event": "image", **record})
                bar.update(1)
        extra = self.finish()
        names = sorted(extra)
        summed = dist_util.all_reduce_sum([len(mine), *(float(extra[k]) for k in names)])  # waits for all ranks
        computed = int(summed[0])
        totals = {k: float(v) for k, v in zip(names, summed[1:])}
        secs = time.time() - t0
        skipped = self.n_images - len(todo)
        if self.rank == 0:
            append_jsonl(self.out / self.log_name, {"event": "end", "time": time.time(), "computed": computed,
                                                    "skipped": skipped, "seconds": round(secs, 3),
                                                    **{k: round(v, 3) for k, v in totals.items()}})
        return {"images": self.n_images, "computed": computed, "skipped": skipped, "seconds": secs,
                "out_dir": str(self.out), "processes": self.world, **totals}


__all__ = ["PerImageJob", "first_n", "first_images"]

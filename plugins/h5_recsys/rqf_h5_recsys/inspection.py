"""``rqf inspect`` for item_data.h5 and sequence.h5."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from rqf import DataError, InspectReport
from rqf_h5_recsys.formats import (check_item_file, check_known_items, open_h5,
                                   read_sequence_file)


def _layout(f: h5py.File) -> list[str]:
    lines = ["datasets:"]
    for name, ds in f.items():
        if isinstance(ds, h5py.Dataset):
            base = h5py.check_vlen_dtype(ds.dtype)
            dtype = f"vlen {np.dtype(base) if base not in (str, bytes) else 'str'}" \
                if base is not None else str(ds.dtype)
            comp = f", {ds.compression}" if ds.compression else ""
            lines.append(f"  {name:<18} {str(ds.shape):<16} {dtype}{comp}")
        else:
            lines.append(f"  {name:<18} (group)")
    lines.append("attributes:")
    lines += [f"  {k} = {v}" for k, v in f.attrs.items()]
    return lines


def inspect_file(path: Path) -> InspectReport:
    report = InspectReport(f"{path}")
    try:
        f = open_h5(path)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    with f:
        report.lines += _layout(f)
        if "sequences" in f or "user_ids" in f:
            _inspect_sequences(f, path, report)
        else:
            _inspect_items(f, path, report)
    return report


def _inspect_items(f: h5py.File, path: Path, report: InspectReport) -> None:
    report.title = f"{path}: item file"
    meta, probs = check_item_file(f, path)
    report.problems += probs.items
    if meta is None:
        return
    report.lines.append(f"items: {meta.n_items}, embedding_dim {meta.embedding_dim}, "
                        f"ids {meta.item_ids.min()}..{meta.item_ids.max()}, "
                        f"features: {'yes' if meta.has_features else 'no'}")
    sample = f["embeddings"][:min(meta.n_items, 10000)]
    norms = np.linalg.norm(sample.astype(np.float64), axis=1)
    finite = np.isfinite(norms)
    if finite.any():
        report.lines.append(f"embedding norms (first {len(sample)} rows): min {norms[finite].min():.4g}, "
                            f"mean {norms[finite].mean():.4g}, max {norms[finite].max():.4g}")


def _inspect_sequences(f: h5py.File, path: Path, report: InspectReport) -> None:
    report.title = f"{path}: sequence file"
    table, probs = read_sequence_file(f, path)
    if table is not None:
        item_file = path.with_name("item_data.h5")
        if item_file.exists() and item_file != path:
            try:
                with open_h5(item_file) as items:
                    meta, _ = check_item_file(items, item_file, check_values=False)
                if meta is not None:
                    check_known_items(table, meta.item_ids, path, probs)
                    report.lines.append(f"item ids checked against {item_file}")
            except DataError as exc:
                report.lines.append(f"item ids not checked: {exc}")
        else:
            report.lines.append("item ids not checked: no item_data.h5 beside this file")
        lengths = table.lengths
        report.lines.append(f"sequences: {len(table)}, interactions: {int(table.offsets[-1])}, "
                            f"distinct items: {len(np.unique(table.item_ids))}")
        if len(lengths):
            q = np.percentile(lengths, [0, 25, 50, 75, 90, 99, 100])
            report.lines.append("sequence length: min {:.0f}, p25 {:.0f}, median {:.0f}, p75 {:.0f}, "
                                "p90 {:.0f}, p99 {:.0f}, max {:.0f}, mean {:.2f}".format(*q, lengths.mean()))
            report.lines.append(f"sequences longer than 200 (truncated by default): "
                                f"{int((lengths > 200).sum())}")
        has_ts = table.timestamps is not None
        report.lines.append(f"timestamps: {'yes' if has_ts else 'no'}")
        if has_ts and len(table.timestamps):
            ts = table.timestamps
            report.lines.append(f"time range: {ts.min()} .. {ts.max()}, "
                                f"0.8-quantile cut-off {int(np.quantile(ts, 0.8, method='higher'))}")
        report.lines.append("splitter auto would use: " + (
            "temporal (cut-off at the 0.8 quantile of timestamps)" if has_ts
            else "index (test_ratio 0.2)"))
        short = {k: int((lengths < k).sum()) for k in (2, 3)}
        report.lines.append(f"leave_last_out: {short[2]} users with 1 item (train only), "
                            f"{short[3] - short[2]} with 2 items (no validation target)")
    report.problems += probs.items

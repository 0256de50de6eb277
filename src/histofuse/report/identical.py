"""Summary rows that carry the same result, found from their metrics and merged with a note.

Two rows of one task are the same result when every (seed, fold, gene) Pearson and MSE agree
(to 1e-10). That happens by construction, not by chance:

* the ``per-sample`` and pooled protocols when every test fold holds one sample (the per-sample
  mean over one sample is the pooled value);
* the ``linear`` and ``concat`` heads on the same features (one ``Linear`` layer on the
  concatenated features, trained alike).

The tables show such a group once, with the differing key values joined (``linear = concat``),
and list what was merged and why; ``summary.csv`` keeps every row and names, in ``identical_to``,
the row it was merged into.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from histofuse.report.tables import keys_of

SAME_HEADS = frozenset({"linear", "concat"})
MERGE_COLUMNS = ["task", "kept", "merged", "reason"]


def _fingerprint(rows: pd.DataFrame) -> str:
    """A digest of a row's metrics, blind to the name of the test sample."""
    one_per_fold = rows.groupby(["seed", "fold"])["sample"].nunique().max() <= 1
    units = ["seed", "fold", *([] if one_per_fold else ["sample"]), "gene"]
    values = [c for c in ("pearson", "mse") if c in rows]
    table = rows[[*units, *values]].sort_values(units)
    table = table.assign(**{c: table[c].round(10) for c in values})
    return hashlib.sha1(table.to_csv(index=False, na_rep="nan").encode()).hexdigest()


def _reason(group: pd.DataFrame, metrics: pd.DataFrame) -> str:
    """Why the rows of a group are one result, from the keys that differ."""
    why = []
    if group["head"].nunique() > 1 and set(group["head"]) <= SAME_HEADS:
        why.append("concat is the linear head on the same features")
    if group["protocol"].nunique() > 1:
        rows = metrics.merge(group[["task", "features", "head", "protocol"]])
        if rows.groupby(["protocol", "seed", "fold"])["sample"].nunique().max() <= 1:
            why.append(
                "every test fold has one sample, so both protocols score the same predictions"
            )
    return "; ".join(why) or "the same Pearson and MSE on every seed, fold and gene"


def identical_rows(metrics: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Groups of summary rows that carry the same result.

    Returns:
        One row per summary row in a group of two or more: its keys, ``group`` (the group's
        number), ``kept`` (True for the one row shown) and ``reason``.
    """
    keys = keys_of(summary)
    if "sample" not in metrics:
        metrics = metrics.assign(sample="")
    prints = [
        {**dict(zip(keys, key, strict=True)), "print": _fingerprint(rows)}
        for key, rows in metrics.groupby(keys, sort=True)
    ]
    frame = pd.DataFrame(prints, columns=[*keys, "print"])
    frame = frame[frame.duplicated(["task", "print"], keep=False)]
    out = []
    for number, (_, group) in enumerate(frame.groupby(["task", "print"], sort=True)):
        group = group.sort_values(keys)
        reason = _reason(group, metrics)
        for i, rec in enumerate(group[keys].to_dict("records")):
            out.append({**rec, "group": number, "kept": i == 0, "reason": reason})
    return pd.DataFrame(out, columns=[*keys, "group", "kept", "reason"])


def _joined(group: pd.DataFrame, key: str) -> str:
    return " = ".join(dict.fromkeys(group[key].astype(str)))


def collapse(frame: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each group of identical rows shown once, differing key values joined.

    The kept row's ``head`` (say) reads ``concat = linear``; rows outside groups are unchanged.
    """
    keys = keys_of(frame)
    if groups.empty or frame.empty:
        return frame
    tagged = frame.merge(groups, on=keys, how="left")
    out = tagged[~tagged["kept"].eq(False)].copy()
    for number, group in groups.groupby("group"):
        at = out.index[out["group"] == number]
        for key in ("features", "head", "protocol"):
            if key in out:
                out.loc[at, key] = _joined(group, key)
    return out.drop(columns=["group", "kept", "reason"]).reset_index(drop=True)


def collapse_methods(summary: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with methods that carry the same result in every task shown once.

    A method (features, head, protocol) spans tasks, so two methods merge only when they have
    the same tasks and, in each, rows of one group; a method identical to another in one task
    only keeps its own row (in the per-task table it then repeats that task's value).
    """
    keys = keys_of(summary)
    method = [k for k in keys if k != "task"]
    if groups.empty or summary.empty or "task" not in keys:
        return summary
    tagged = summary.merge(groups[[*keys, "group"]], on=keys, how="left").reset_index(drop=True)
    result = tagged["group"].map(lambda g: f"g{int(g)}" if pd.notna(g) else "")
    result = result.where(result != "", pd.Series(tagged.index, dtype=str).radd("r"))
    tagged["result"] = tagged["task"].astype(str) + ":" + result
    signature = tagged.groupby(method)["result"].agg(lambda r: "|".join(sorted(r)))
    merged = signature.reset_index().rename(columns={"result": "signature"})
    tagged = tagged.merge(merged, on=method)
    keep = tagged.drop_duplicates("signature")[[*method, "signature"]]
    out = tagged.merge(keep[[*method]], on=method)
    for _, same in merged.groupby("signature"):
        if len(same) > 1:
            at = out["signature"] == same["signature"].iloc[0]
            for key in method:
                out.loc[at, key] = _joined(same.sort_values(method), key)
    return out.drop(columns=["group", "result", "signature"])


def merge_notes(groups: pd.DataFrame) -> pd.DataFrame:
    """One line per group: task, the label shown, the rows merged into it, and why."""
    rows = []
    for _, group in groups.groupby("group", sort=True):
        labels = [
            " · ".join(str(r[k]) for k in ("features", "head", "protocol"))
            for r in group.to_dict("records")
        ]
        rows.append(
            {
                "task": group["task"].iloc[0],
                "kept": labels[0],
                "merged": "; ".join(labels[1:]),
                "reason": group["reason"].iloc[0],
            }
        )
    return pd.DataFrame(rows, columns=MERGE_COLUMNS)


def identical_to(summary: pd.DataFrame, groups: pd.DataFrame) -> pd.Series:
    """Per summary row, the label of the row it was merged into (empty when shown itself)."""
    keys = keys_of(summary)
    if groups.empty:
        return pd.Series("", index=summary.index)
    kept = groups[groups["kept"]].set_index("group")
    label = {
        g: " · ".join(str(kept.at[g, k]) for k in ("features", "head", "protocol"))
        for g in kept.index
    }
    tagged = summary[keys].merge(groups, on=keys, how="left")
    text = [
        "" if pd.isna(g) or k else label[int(g)]
        for g, k in zip(tagged["group"], tagged["kept"], strict=True)
    ]
    return pd.Series(text, index=summary.index)

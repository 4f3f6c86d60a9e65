"""``dtfd_ablation``: DTFD-MIL's number of pseudo-bags per slide, Tier 1 against Tier 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from wsimil.experiments.cells import Cell
from wsimil.experiments.registry import Experiment, ExperimentReport, figures, register_experiment, tables


@register_experiment
class DTFDAblation(Experiment):
    name = "dtfd_ablation"
    description = "DTFD's number of pseudo-bags (section `dtfd_ablation`)"
    section = "dtfd_ablation"
    summary_order = 40
    captions = {"dtfd_ablation": "DTFD-MIL: test AUC against the number of pseudo-bags per slide. Tier 2 = slide "
                "AUC; Tier 1 = AUC over the test pseudo-bags, each labelled with its slide's label (as the official "
                "test loop computes it). The AUC of the seed-averaged scores (SUMMARY.md's number) and the mean ± sd "
                "of the seeds' own AUCs. For Tier 1 also the oracle ceiling on the same pseudo-bags (a perfect instance "
                "detector: a pseudo-bag scores 1 when it holds tumour; mean of the seeds') and the seeds' mean AUC as a "
                "fraction of it."}

    def cells(self, config: Mapping[str, Any]) -> list[Cell]:
        a = config["dtfd_ablation"]
        return [Cell(f"dtfd_ablation_m{m}", "dtfd_ablation", "clean", "main", (a["method"],),
                     overrides={a["method"]: {"model": {"n_pseudo_bags": int(m)}}}, params={"n_pseudo_bags": int(m)})
                for m in a["pseudo_bags"]]

    def outputs(self, config: Mapping[str, Any], has_slides: bool = True) -> list[str]:
        return tables("dtfd_ablation") + figures("dtfd_ablation")

    def write(self, report: ExperimentReport) -> list[Path]:
        from wsimil.reporting.evidence import dtfd_ceilings, dtfd_points
        from wsimil.reporting.experiments import dtfd_ablation_data, sweep_table
        from wsimil.reporting.figures import plot_dtfd_ablation
        from wsimil.reporting.tables import write_table

        data = dtfd_ablation_data(report.metrics, report.own)
        table = sweep_table(data, ["n_pseudo_bags", "tier"], "auc").merge(
            dtfd_points(report.results, report.own, report.seeds), on=["n_pseudo_bags", "tier"], how="left")
        ceil = dtfd_ceilings(report.results, report.own, report.seeds)
        ceil = ceil.groupby("n_pseudo_bags", as_index=False)["ceiling"].mean().rename(
            columns={"ceiling": "oracle_ceiling_mean"}).assign(tier="Tier 1")
        table = table.merge(ceil, on=["n_pseudo_bags", "tier"], how="left")
        table["fraction_of_ceiling"] = table["auc_mean"] / table["oracle_ceiling_mean"]
        table = table[["n_pseudo_bags", "tier", "n_seeds", "auc_seedavg", "auc_mean", "auc_std", "oracle_ceiling_mean",
                       "fraction_of_ceiling"]]
        written = write_table(table, report.table_path("dtfd_ablation"), report.caption("dtfd_ablation"))
        return written + plot_dtfd_ablation(data, report.figure_path("dtfd_ablation"))

    def claims(self, config, results, cells):
        from wsimil.reporting.evidence import dtfd_claims, fit_bar

        own = [c for c in cells.values() if c.experiment == self.name]
        return dtfd_claims(results, own, list(config["training"]["seeds"]), fit_bar(config))

    def findings(self, config, results, cells, df, claims) -> list[str]:
        from wsimil.reporting.evidence import dtfd_ceilings, dtfd_points
        from wsimil.reporting.experiments import dtfd_ablation_data
        from wsimil.reporting.summary import claim_text, fmt

        if "dtfd_tier1" not in claims or results is None:
            return []
        own = [c for c in cells.values() if c.experiment == self.name]
        pts = dtfd_points(results, own, list(config["training"]["seeds"]))
        parts = [f"{tier}: " + ", ".join(f"M={r.n_pseudo_bags} {fmt(r.auc_seedavg)}" for r in g.itertuples())
                 for tier, g in pts.groupby("tier", sort=False)]
        seeds = list(config["training"]["seeds"])
        ceil = dtfd_ceilings(results, own, seeds)
        obs = dtfd_ablation_data(df, own)
        obs = obs[obs["tier"] == "Tier 1"].groupby("n_pseudo_bags")["auc"].mean()
        per_m = ceil.groupby("n_pseudo_bags")["ceiling"].mean()
        if per_m.notna().all():
            ceiling = ("The Tier-1 claim judges the Tier-1 AUC itself (the paper's quantity). A perfect instance "
                       "detector on the same pseudo-bags (a pseudo-bag scores 1 when it holds tumour) would score "
                       + ", ".join(f"M={m} {fmt(c)}" for m, c in per_m.items()) + "; the seeds' mean Tier-1 AUC is "
                       + ", ".join(f"{fmt(obs.get(m, float('nan')) / c)}" for m, c in per_m.items())
                       + " of that ceiling: where the ceiling falls with M, so much of the drop is arithmetic.")
        else:
            why = next((w for w in ceil["why"] if w), "")
            ceiling = f"The Tier-1 oracle ceiling could not be computed: {why}"
        return [f"**DTFD-MIL: more pseudo-bags hurt Tier 1, not Tier 2.** Test AUC of the seed-averaged scores by "
                f"number of pseudo-bags M — {'; '.join(parts)}. Tier 1: {claim_text(claims['dtfd_tier1'])} {ceiling} "
                f"Tier 2: {claim_text(claims['dtfd_tier2'])}"]

"""ROUGE as an offline evaluate module (rouge-score), matching harness.scorers.text.

Differences from evaluate's hub ``rouge``:
* ``use_stemmer`` defaults to True (Porter stemming), like the harness's ``rouge`` scorer.
* ``use_aggregator=True`` returns the arithmetic MEAN of the per-example F-measures. The hub module
  returns the ``mid`` of rouge-score's BootstrapAggregator, a random resampling estimate that is not
  exactly the mean and is not reproducible between runs.
Unchanged: rouge-score's default tokenizer, rougeLsum sentences split on newlines, and for several
references per prediction ``RougeScorer.score_multi`` (the max F-measure per rouge type).
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_CITATION = """\
@inproceedings{lin-2004-rouge,
    title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
    author = "Lin, Chin-Yew",
    booktitle = "Text Summarization Branches Out",
    year = "2004",
    url = "https://www.aclweb.org/anthology/W04-1013",
    pages = "74--81",
}
"""

_DESCRIPTION = """\
ROUGE F-measures (rouge1, rouge2, rougeL, rougeLsum) computed with Google Research's rouge-score
package, offline. Case-insensitive; only ASCII letters and digits form tokens (rouge-score's tokenizer).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted strings.
    references: list of reference strings, or list of lists of reference strings (max per type).
    rouge_types: subset of ["rouge1", "rouge2", "rougeL", "rougeLsum"] (default: all four).
    use_stemmer: Porter stemming of tokens longer than 3 characters (default True).
    use_aggregator: True (default) for the mean F-measure per type, False for per-example lists.
Returns:
    dict rouge type -> float (mean F-measure) or list of floats.
"""

ROUGE_TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(datasets.Value("string", id="sequence")),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
            ],
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
            reference_urls=["https://en.wikipedia.org/wiki/ROUGE_(metric)"],
        )

    def _compute(self, predictions, references, rouge_types=None, use_aggregator=True, use_stemmer=True):
        rouge_types = list(rouge_types or ROUGE_TYPES)
        scorer = rouge_scorer.RougeScorer(rouge_types=rouge_types, use_stemmer=use_stemmer)
        per_type = {k: [] for k in rouge_types}
        for ref, pred in zip(references, predictions):
            refs = [ref] if isinstance(ref, str) else list(ref)
            scores = scorer.score_multi(refs, pred)
            for k in rouge_types:
                per_type[k].append(float(scores[k].fmeasure))
        if not use_aggregator:
            return per_type
        # Plain left-to-right sum, the same order as harness.scorers.text.corpus_rouge.
        out = {}
        for k, values in per_type.items():
            total = 0.0
            for v in values:
                total += v
            out[k] = total / len(values) if values else None
        return out

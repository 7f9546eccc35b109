"""chrF as an offline evaluate module, computed by sacrebleu (like the hub ``chrf`` module).

Defaults are sacrebleu's: character order 6, word order 0 (chrF; 2 gives chrF++), beta 2,
whitespace removed, no epsilon smoothing. Matches harness.scorers.text.corpus_chrf / the ``chrf``
scorer. Examples may have different numbers of references (padded with None).
"""

import datasets
import evaluate
import sacrebleu as scb

from harness.scorers.text import corpus_result  # one definition of the corpus numbers and signature

_CITATION = """\
@inproceedings{popovic-2015-chrf,
    title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
    author = "Popovi{\\'c}, Maja",
    booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
    year = "2015",
    url = "https://aclanthology.org/W15-3049",
    pages = "392--395",
}
"""

_DESCRIPTION = """\
Corpus chrF from sacrebleu (offline), with sacrebleu's reproducibility signature.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted strings.
    references: list of reference strings, or list of lists of reference strings.
    char_order (6), word_order (0), beta (2), lowercase (False), whitespace (False), eps_smoothing (False).
    sentence_scores: also return "sentence_scores", sacrebleu.sentence_chrf per example (default False).
Returns:
    score, char_order, word_order, beta, signature[, sentence_scores]
"""




@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Chrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            homepage="https://github.com/mjpost/sacreBLEU#chrf--chrf",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(datasets.Value("string", id="sequence"), id="references"),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
            ],
            codebase_urls=["https://github.com/mjpost/sacreBLEU#chrf--chrf"],
            reference_urls=["https://github.com/m-popovic/chrF"],
        )

    def _compute(self, predictions, references, char_order=6, word_order=0, beta=2, lowercase=False,
                 whitespace=False, eps_smoothing=False, sentence_scores=False):
        def make():
            return scb.CHRF(char_order=char_order, word_order=word_order, beta=beta, lowercase=lowercase,
                            whitespace=whitespace, eps_smoothing=eps_smoothing)

        metric = make()
        out = corpus_result(metric, predictions, references)
        if sentence_scores:
            out["sentence_scores"] = [
                float(make().sentence_score(p, [r] if isinstance(r, str) else list(r)).score)
                for p, r in zip(predictions, references)
            ]
        return out

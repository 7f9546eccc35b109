"""BLEU as an offline evaluate module, computed by sacrebleu (like the hub ``sacrebleu`` module).

Note: the hub module named ``bleu`` is a different implementation (tensorflow/nmt's BLEU on 0-1);
this one is sacrebleu's, on 0-100, and matches harness.scorers.text.corpus_bleu / the ``bleu`` scorer.
Defaults are sacrebleu's: 13a tokenizer, case-sensitive, exp smoothing; corpus level without
effective order, per-sentence scores (``sentence_scores=True``) as ``sacrebleu.sentence_bleu``
(effective order on). Examples may have different numbers of references (padded with None).
"""

import datasets
import evaluate
import sacrebleu as scb

from harness.scorers.text import corpus_result  # one definition of the corpus numbers and signature

_CITATION = """\
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    url = "https://www.aclweb.org/anthology/W18-6319",
    pages = "186--191",
}
"""

_DESCRIPTION = """\
Corpus BLEU from sacrebleu (offline), with sacrebleu's reproducibility signature.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted strings.
    references: list of reference strings, or list of lists of reference strings.
    smooth_method, smooth_value, lowercase, tokenize: passed to sacrebleu (defaults: 'exp', None, False, '13a').
    use_effective_order: corpus-level effective order (default False, sacrebleu's corpus default).
    sentence_scores: also return "sentence_scores", sacrebleu.sentence_bleu per example (default False).
Returns:
    score, counts, totals, precisions, bp, sys_len, ref_len, signature[, sentence_scores]
"""




@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            homepage="https://github.com/mjpost/sacreBLEU",
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
            codebase_urls=["https://github.com/mjpost/sacreBLEU"],
            reference_urls=["https://github.com/mjpost/sacreBLEU"],
        )

    def _compute(self, predictions, references, smooth_method="exp", smooth_value=None, lowercase=False,
                 tokenize=None, use_effective_order=False, sentence_scores=False):
        tok = {"tokenize": tokenize} if tokenize else {}
        metric = scb.BLEU(lowercase=lowercase, force=False, smooth_method=smooth_method,
                          smooth_value=smooth_value, effective_order=use_effective_order, **tok)
        out = corpus_result(metric, predictions, references)
        if sentence_scores:
            out["sentence_scores"] = [
                float(scb.sentence_bleu(p, [r] if isinstance(r, str) else list(r), smooth_method=smooth_method,
                                        smooth_value=smooth_value, lowercase=lowercase, **tok).score)
                for p, r in zip(predictions, references)
            ]
        return out

"""What a report section is drawn with, below every analysis that draws one: the finished runs it reads
(:mod:`~ivlens.page.reader`), the page's HTML pieces (:mod:`~ivlens.page.html`), its context and guard
(:mod:`~ivlens.page.context`), the figures' shared names and order (:mod:`~ivlens.page.figures`) and the set-up
section every report opens with (:mod:`~ivlens.page.setup`).

Each analysis's own section lives in its package (``ivlens.<analysis>.section``, or ``ivlens/analyses/<name>/``)
and the registry (:data:`ivlens.analyses.ANALYSES`) lists it; :mod:`ivlens.report` assembles the page.
"""

from .context import Context, guard, omitted_as, runs_section
from .reader import Run, Study, read_study

__all__ = ["Context", "Run", "Study", "guard", "omitted_as", "read_study", "runs_section"]

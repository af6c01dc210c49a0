"""Case reports as self-contained HTML (overlays embedded), with no patient identifiers.

A case appears under its stored name (`case-<hash>` plus the reviewer's label; never the uploaded file's name),
reviewers under their login. Everything from the store is HTML-escaped, and the report's Content-Security-Policy
lets a browser load nothing from outside the file (no remote images, scripts or styles).
"""

from __future__ import annotations

import base64
import datetime
import html

from xai_core.models.ood import UNRELIABLE
from xai_core.store import CaseStore

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1100px}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:1rem}.grid figure{margin:0;width:320px}.grid img{width:320px}
.note{background:#fff4e5;border:1px solid #f0b060;padding:.6rem;margin:1rem 0}
.ood{background:#fdecea;border:2px solid #b00020;color:#7a0016;font-weight:600}
.unreliable{color:#b00020;font-weight:600}
"""


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _guard_note(payload: dict) -> str:
    """The out-of-domain note of a stored prediction: the banner where the guard fired, a line where it did not
    look ('' for results stored before the guard, or in domain)."""
    flag = payload.get("out_of_domain", False)
    if flag:
        score, threshold = payload.get("ood_score"), payload.get("ood_threshold")
        numbers = (f" (out-of-domain score {score:.1f}, threshold {threshold:.1f})"
                   if isinstance(score, float | int) and isinstance(threshold, float | int) else "")
        return f"<div class='note ood'>{html.escape(str(payload.get('ood_note') or UNRELIABLE))}{numbers}</div>"
    if flag is None and "out_of_domain" in payload:
        return f"<p>Out-of-domain guard: {html.escape(str(payload.get('ood_note') or 'not checked'))}.</p>"
    return ""


def case_report_html(store: CaseStore, sha256: str, *, title: str = "Case report") -> str:
    """An HTML report of one stored case: thumbnail, predictions (with the out-of-domain note where the guard
    fired), explanations (marked unreliable then) and verdicts."""
    case = store.case(sha256)
    if case is None:
        raise KeyError(f"no case {sha256[:12]}… in the store")
    results = store.results(sha256)
    verdicts = store.verdicts(sha256)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='Content-Security-Policy' "
             f"content=\"{CSP}\"><meta name='referrer' content='no-referrer'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p>Case <code>" + html.escape(sha256[:16]) + "</code> (content hash; no patient identifiers) · "
             f"{html.escape(case['label'])} · generated {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC</p>",
             _img(case["thumbnail"], "radiograph")]
    flagged = set()
    for result in (r for r in results if r["kind"] == "prediction"):
        payload = result["payload"]
        if payload.get("demo"):
            parts.append("<div class='note'>Demonstration model trained on synthetic radiographs; not for clinical "
                         "use.</div>")
        parts.append(_guard_note(payload))
        mark = ""
        if payload.get("out_of_domain"):
            flagged.add(result["model"])
            mark = f" <span class='unreliable'>({UNRELIABLE})</span>"
        parts.append(f"<h2>Findings · {html.escape(result['model'])}{mark}</h2><table><tr><th>Finding</th>"
                     "<th>Probability</th><th>Operating point</th><th>Positive</th></tr>")
        for row in payload.get("findings", []):
            parts.append(f"<tr><td>{html.escape(row['label'])}</td><td>{row['probability']:.3f}</td>"
                         f"<td>{row['threshold']:.3f}</td><td>{'yes' if row['positive'] else ''}</td></tr>")
        parts.append("</table>")
    explanations = [r for r in results if r["kind"] == "explanation"]
    if explanations:
        parts.append("<h2>Explanations</h2><div class='grid'>")
        for r in explanations:
            caption = f"{r['method']} · {r['target']} · {r['model']} · {r['payload'].get('seconds', 0):.2f} s"
            unreliable = r["model"] in flagged or bool(r["payload"].get("out_of_domain"))
            mark = f" <span class='unreliable'>{UNRELIABLE}</span>" if unreliable else ""
            parts.append(f"<figure>{_img(r['overlay'], caption)}<figcaption>{html.escape(caption)}{mark}"
                         "</figcaption></figure>")
        parts.append("</div>")
    parts.append("<h2>Reviewer verdicts</h2>")
    if verdicts:
        parts.append("<table><tr><th>Time (UTC)</th><th>Model</th><th>Finding</th><th>Method</th><th>Verdict</th>"
                     "<th>Comment</th><th>Reviewer</th><th>Role</th></tr>")
        for v in verdicts:
            parts.append(f"<tr><td>{html.escape(v.created)}</td><td>{html.escape(v.model)}</td>"
                         f"<td>{html.escape(v.target)}</td><td>{html.escape(v.method)}</td>"
                         f"<td>{html.escape(v.verdict)}</td><td>{html.escape(v.comment)}</td>"
                         f"<td>{html.escape(v.reviewer)}</td><td>{html.escape(v.role)}</td></tr>")
        parts.append("</table><p>Reviewers are named by their dashboard login.</p>")
    else:
        parts.append("<p>None recorded.</p>")
    parts.append("</body></html>")
    return "".join(parts)

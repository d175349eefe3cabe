"""gallery.html: originals beside perturbed images, for a person auditing that labels were kept.

The page is one self-contained file (images inline as data URIs, inline CSS and JS, no network),
so it opens offline from ``file://`` and can be attached to a review. Its bytes depend only on
the build (no timestamps), so a rebuild with the same seed gives the same page.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from builder.errors import BuilderError
from builder.fileio import write_bytes_atomic
from builder.htmlpage import page_template

log = logging.getLogger(__name__)

GALLERY_FILE = "gallery.html"
#: images wider or taller than this are embedded as lossy WebP thumbnails of this size
THUMB = 96
#: cards on the whole page before the per-class limit is lowered (at least one per class is kept)
MAX_CARDS = 1000
META_COLUMNS = ("key", "label", "class_name", "steps", "stop_reason", "oracle_prob", "pred_before", "pred_after", "reference_model")


class GalleryError(BuilderError):
    """A directory is not a built benchmark, or its shards cannot be read for the gallery."""


@dataclass(frozen=True)
class Card:
    """One sample of one config, with its encoded images (``original`` is None without originals)."""

    record: dict[str, Any]
    perturbed: bytes
    original: Optional[bytes]


@dataclass(frozen=True)
class ConfigCards:
    name: str
    cards: list[Card]
    total: int  # samples of the config, of which ``cards`` were picked
    has_originals: bool
    note: str = ""


def write_gallery(root: Path, manifest: dict[str, Any], *, per_class: int = 24) -> Path:
    """Write ``root/gallery.html`` from the Parquet shards listed in ``manifest``; returns its path."""
    if per_class < 1:
        raise GalleryError(f"per_class must be at least 1, got {per_class}")
    class_names = [str(name) for name in manifest.get("class_names", [])]
    configs = manifest.get("configs") or {}
    limit = per_class_limit(per_class, len(class_names), len(configs))
    if limit < per_class:
        log.info("gallery: %d classes x %d configs, showing at most %d per class (page budget %d cards)",
                 len(class_names), len(configs), limit, MAX_CARDS)
    sections = [read_config(root, name, config, limit, len(class_names)) for name, config in configs.items()]
    page = render_page(manifest, class_names, sections, limit)
    path = root / GALLERY_FILE
    write_bytes_atomic(path, page.encode("utf-8"))
    log.info("wrote %s: %d cards, %d bytes", path, sum(len(s.cards) for s in sections), len(page.encode("utf-8")))
    return path


def per_class_limit(per_class: int, num_classes: int, num_configs: int) -> int:
    """Lower ``per_class`` so a 1000-class build stays a few MB, but keep one pair per class."""
    budget = MAX_CARDS // max(1, num_classes * num_configs)
    return max(1, min(per_class, budget))


def spread(ranked: list[int], limit: int) -> list[int]:
    """``limit`` evenly spaced items of ``ranked``, both ends included (the last one alone if 1).

    Ranked by steps, this shows an auditor the unperturbed and the most-moved samples: the
    label is most at risk where the most steps were accepted, so those are never left out.
    """
    if len(ranked) <= limit:
        return list(ranked)
    if limit == 1:
        return [ranked[-1]]
    last = len(ranked) - 1
    return [ranked[round(i * last / (limit - 1))] for i in range(limit)]


def read_config(root: Path, name: str, config: dict[str, Any], limit: int, num_classes: int) -> ConfigCards:
    """Pick up to ``limit`` samples per class (spread over steps, ties by key) and read their images;
    a record the page cannot show (a label that is no class index, say) is a one-line error."""
    from builder.benchmark import BenchmarkError, reading_shard, shard_reader

    try:
        reader, paths = shard_reader(root, config, f"config '{name}'")
    except BenchmarkError as error:
        raise GalleryError(str(error)) from None
    if reader is None:
        return ConfigCards(name, [], 0, False, "this config has no shards in a format the gallery reads")
    rows: list[tuple[int, int, dict[str, Any]]] = []
    for shard, path in enumerate(paths):
        with reading_shard(path):
            records = reader.read_records(path, META_COLUMNS)
        for record in records:
            problem = record_problem(record, num_classes)
            if problem is not None:
                raise GalleryError(f"{name}/{path.name}: sample {str(record.get('key'))[:80]!r} {problem}; the shard is damaged: "
                                   "run 'build-benchmark verify' on the benchmark, then download or build it again")
        rows.extend((shard, row, record) for row, record in enumerate(records))
    by_class: dict[int, list[int]] = {}
    for position in sorted(range(len(rows)), key=lambda p: (rows[p][2]["steps"], rows[p][2]["key"])):
        by_class.setdefault(int(rows[position][2]["label"]), []).append(position)
    chosen = sorted((p for label in sorted(by_class) for p in spread(by_class[label], limit)),
                    key=lambda p: (rows[p][2]["label"], rows[p][2]["key"]))
    images = read_images_at(reader, paths, [(rows[p][0], rows[p][1]) for p in chosen])
    cards = [Card(rows[p][2], *images[(rows[p][0], rows[p][1])]) for p in chosen]
    has_originals = any(original is not None for _, original in images.values()) if images else False
    return ConfigCards(name, cards, len(rows), has_originals)


#: record columns the page shows as numbers: integers, or any real number
INTEGER_COLUMNS = ("steps", "pred_before", "pred_after")
NUMBER_COLUMNS = ("oracle_prob",)


def record_problem(record: dict[str, Any], num_classes: int) -> Optional[str]:
    """Why the page cannot show a shard's record (None if it can): a label that is no class
    index (null, a string, out of range), or a number column that is no number."""
    label = record.get("label")
    if not (isinstance(label, int) and not isinstance(label, bool) and 0 <= label < num_classes):
        return f"has label {repr(label)[:40]}, not a class index 0..{num_classes - 1} (the {num_classes} class_names)"
    for column in INTEGER_COLUMNS + NUMBER_COLUMNS:
        value = record.get(column)
        if not (_is_int(value) or (column in NUMBER_COLUMNS and isinstance(value, float))):
            return f"has {column} {repr(value)[:40]}, not a number"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_images_at(reader: Any, paths: list[Path], wanted: list[tuple[int, int]]) -> dict[tuple[int, int], tuple[bytes, Optional[bytes]]]:
    """(perturbed, original) bytes of the wanted (shard, row) pairs, one shard in memory at a time."""
    from builder.benchmark import reading_shard

    found: dict[tuple[int, int], tuple[bytes, Optional[bytes]]] = {}
    for shard, path in enumerate(paths):
        rows = sorted(row for s, row in wanted if s == shard)
        if rows:
            with reading_shard(path):
                pairs = reader.read_images(path, rows)
            found.update(((shard, row), pair) for row, pair in zip(rows, pairs, strict=False))
    return found


def data_uri(data: bytes) -> tuple[str, bool]:
    """An image as a data URI; large ones shrunk to a WebP thumbnail (True) to keep the page small."""
    from PIL import Image

    from builder.images import open_benchmark_image

    with open_benchmark_image(data) as image:
        mime = Image.MIME.get(image.format or "", "image/png")
        if max(image.size) <= THUMB:
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}", False
        thumb = image.convert("RGB")
        thumb.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="WEBP", quality=80, method=6)
    return f"data:image/webp;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}", True


def _class_name(class_names: list[str], index: Any) -> str:
    position = int(index)
    return class_names[position] if 0 <= position < len(class_names) else f"#{position}"


def _img(data: bytes, what: str) -> str:
    """The image with its caption; an image that does not decode (a damaged shard) is said so
    in its place, and the rest of the page still shows."""
    try:
        uri, thumb = data_uri(data)
    except (OSError, ValueError, SyntaxError, EOFError):  # what Pillow raises on damaged bytes
        return f'<div class="pic"><span>{what}: this image does not decode; run build-benchmark verify</span></div>'
    css = ' class="thumb"' if thumb else ""
    return f'<div class="pic"><img src="{uri}" alt="{what}"{css}><span>{what}</span></div>'


def render_sample_card(config: str, card: Card, class_names: list[str]) -> str:
    """One card: original | perturbed, and what the oracle and the reference model said."""
    record, esc = card.record, html.escape
    before, after = _class_name(class_names, record["pred_before"]), _class_name(class_names, record["pred_after"])
    label, verdict = int(record["label"]), "kept"
    if int(record["pred_after"]) != label:
        verdict = "flipped" if int(record["pred_before"]) == label else "wrong"
    pictures = (_img(card.original, "original") if card.original is not None else "") + _img(card.perturbed, "perturbed")
    return (
        f'<figure class="card" data-config="{esc(config)}" data-class="{esc(str(record["class_name"]))}" '
        f'data-steps="{int(record["steps"])}" data-key="{esc(str(record["key"]))}">'
        f'<div class="pair">{pictures}</div><figcaption>'
        f'<b>{esc(str(record["class_name"]))}</b> <span class="key">{esc(str(record["key"]))}</span><br>'
        f'steps accepted: {int(record["steps"])} &middot; {esc(str(record["stop_reason"]))}<br>'
        f'oracle p(label) = {float(record["oracle_prob"]):.3f}<br>'
        f'<span class="{verdict}">{esc(str(record["reference_model"]))}: {esc(before)} &rarr; {esc(after)}</span>'
        f"</figcaption></figure>"
    )


def render_section(section: ConfigCards, class_names: list[str], limit: int) -> str:
    esc = html.escape
    notes = [f"{len(section.cards)} of {section.total} samples, at most {limit} per class, spread over steps accepted."]
    if not section.has_originals and section.cards:
        notes.append("This build has no original images (output.keep_originals: false): only perturbed images are shown.")
    if section.note:
        notes.append(section.note)
    cards = "\n".join(render_sample_card(section.name, card, class_names) for card in section.cards)
    return (
        f'<section class="config" data-config="{esc(section.name)}">\n'
        f'<h2>reference model: {esc(section.name)}</h2>\n'
        + "".join(f'<p class="note">{esc(note)}</p>\n' for note in notes)
        + f'<div class="cards">\n{cards}\n</div>\n</section>'
    )


def render_page(manifest: dict[str, Any], class_names: list[str], sections: list[ConfigCards], limit: int) -> str:
    esc = html.escape
    steps = [int(c.record["steps"]) for s in sections for c in s.cards]
    top = max(steps, default=0)
    recipe = manifest.get("recipe") or {}
    title = f"{recipe.get('name', 'benchmark')}: originals and perturbed images"
    return PAGE.substitute(
        title=esc(title),
        manifest_id=esc(str(manifest.get("id", ""))),
        config_options="".join(f'<option value="{esc(s.name)}">{esc(s.name)}</option>' for s in sections),
        class_options="".join(f'<option value="{esc(name)}">{esc(name)}</option>' for name in class_names),
        max_steps=top,
        sections="\n".join(render_section(s, class_names, limit) for s in sections),
        script=SCRIPT,
    )


STYLE = """
body{font:14px/1.35 system-ui,sans-serif;margin:0 16px 32px;color:#222;background:#fafafa}
header{position:sticky;top:0;background:#fafafa;padding:8px 0;border-bottom:1px solid #ddd;z-index:1}
h1{font-size:18px;margin:8px 0}h2{font-size:16px;margin:16px 0 4px}
label{margin-right:14px}input[type=number]{width:4.5em}
.note{color:#555;margin:2px 0}.key{color:#888;font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-top:8px}
.card{margin:0;padding:6px;background:#fff;border:1px solid #ccc;border-radius:4px;width:max-content}
.pair{display:flex;gap:6px}.pic{display:flex;flex-direction:column;align-items:center;font-size:11px;color:#666}
.card img{width:128px;height:128px;object-fit:contain;image-rendering:pixelated;background:#eee}
.card img.thumb{image-rendering:auto}
figcaption{font-size:12px;margin-top:4px;max-width:262px}
.kept{color:#176317}.flipped{color:#a31515;font-weight:bold}.wrong{color:#8a5a00}
[hidden]{display:none!important}
"""

SCRIPT = """
(function(){
  var byId=function(id){return document.getElementById(id);};
  var controls={config:byId('f-config'),'class':byId('f-class'),min_steps:byId('f-min'),max_steps:byId('f-max')};
  function readHash(){
    var params=new URLSearchParams(location.hash.replace(/^#/,''));
    Object.keys(controls).forEach(function(name){
      if(params.has(name)){controls[name].value=params.get(name);}
    });
    if(controls.config.selectedIndex<0){controls.config.selectedIndex=0;}
    if(controls['class'].selectedIndex<0){controls['class'].selectedIndex=0;}  // an unknown class: all
  }
  function apply(){
    var config=controls.config.value, cls=controls['class'].value;
    var lo=parseInt(controls.min_steps.value,10), hi=parseInt(controls.max_steps.value,10);
    var shown=0, total=0;
    document.querySelectorAll('section.config').forEach(function(section){
      section.hidden=section.dataset.config!==config;
    });
    document.querySelectorAll('.card').forEach(function(card){
      var steps=parseInt(card.dataset.steps,10), mine=card.dataset.config===config;
      var ok=mine&&(cls===''||card.dataset['class']===cls)&&(isNaN(lo)||steps>=lo)&&(isNaN(hi)||steps<=hi);
      card.hidden=!ok; if(mine){total++;} if(ok){shown++;}
    });
    byId('count').textContent='showing '+shown+' of '+total;
  }
  function remember(){
    var params=new URLSearchParams();
    Object.keys(controls).forEach(function(name){if(controls[name].value!==''){params.set(name,controls[name].value);}});
    try{history.replaceState(null,'','#'+params.toString());}catch(e){}
  }
  Object.keys(controls).forEach(function(name){
    ['input','change'].forEach(function(kind){
      controls[name].addEventListener(kind,function(){apply();remember();});
    });
  });
  window.addEventListener('hashchange',function(){readHash();apply();});
  readHash();apply();
})();
"""

PAGE = page_template(
    STYLE,
    """<p class="note">Check that each perturbed image still shows its class. Left: original, right: perturbed;
the last caption line is the reference model's prediction before &rarr; after
(green: the label, red: flipped by the perturbation, brown: already wrong on the original).
Manifest id <code>$manifest_id</code>.</p>
<form onsubmit="return false">
<label>config <select id="f-config">$config_options</select></label>
<label>class <select id="f-class"><option value="">all</option>$class_options</select></label>
<label>steps from <input id="f-min" type="number" min="0" max="$max_steps" value="0"></label>
<label>to <input id="f-max" type="number" min="0" max="$max_steps" value="$max_steps"></label>
<output id="count"></output>
</form>
</header>
$sections
<script>$script</script>
</body>
</html>
"""
)

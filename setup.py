import runpy
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# Declared once, in a standard-library-only module read by path (the package is not imported here).
DECLARED = runpy.run_path(str(HERE / "deep_speaker" / "requirements.py"))

setup(
    name="deep-speaker",
    version="1.0.0",
    description="Deep Speaker (Baidu, arXiv 1705.02304) speaker embeddings in TensorFlow/Keras 3",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["deep_speaker", "deep_speaker.*"]),
    package_data={"deep_speaker": ["pretrained/*", "service/static/*"]},  # static/: the service's page
    include_package_data=True,
    install_requires=list(DECLARED["REQUIREMENTS"]),
    extras_require={extra: list(requirements) for extra, requirements in DECLARED["EXTRAS"].items()},
    # The seed's command names, on PATH as typed in its README (get_emb.py --get_embeddings ...).
    scripts=[f"scripts/{name}.py" for name in ("preprocess", "train_cli", "comp_cos", "get_emb", "evaluate",
                                               "download_vctk", "download_corpus", "export_model", "pipeline",
                                               "identify")],
    entry_points={
        "console_scripts": [
            "deep-speaker-preprocess=deep_speaker.commands.preprocess:main",
            "deep-speaker-train=deep_speaker.commands.train_cli:main",
            "deep-speaker-comp-cos=deep_speaker.commands.comp_cos:cli",
            "deep-speaker-get-emb=deep_speaker.commands.get_emb:cli",
            "deep-speaker-evaluate=deep_speaker.commands.evaluate:cli",
            "deep-speaker-identify=deep_speaker.commands.identify:cli",
            "deep-speaker-diarize=deep_speaker.commands.diarize:cli",
            "deep-speaker-download-vctk=deep_speaker.commands.download_vctk:main",
            "deep-speaker-download-corpus=deep_speaker.commands.download_corpus:main",
            "deep-speaker-export=deep_speaker.commands.export_model:main",
            "deep-speaker-pipeline=deep_speaker.commands.pipeline:main",
            "deep-speaker-serve=deep_speaker.commands.serve:cli",  # the speaker service (needs [serve])
        ]
    },
)

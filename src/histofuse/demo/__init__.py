"""A deterministic synthetic spatial-transcriptomics study for demos and end-to-end tests.

:func:`write_demo_cohort` writes a small cohort that looks, to the pipeline, like a real one:
pyramidal tiled-JPEG TIFF slides with H&E-like tissue, Visium-like spot counts in ``.h5ad`` files,
slide-level bulk expression, and a sample sheet. Expression is generated from what is drawn in each
spot's neighbourhood (nuclear density and size, tissue-region make-up, eosin, gland lumens) plus
batch effects and negative-binomial noise, so an encoder that captures the tissue better predicts
better. :func:`write_demo_hest_bench` writes a cohort's samples as a HEST-Bench task folder.

Modules:
    layout: the cohort's sample ids and file paths, known before it is generated.
    cohort: the cohort writer; hest_bench: the HEST-Bench task writer.
    genes: the gene model; spots: spot grid, image features, counts and ``.h5ad`` files.
    fields, cells, render: the slide drawing (latent fields, nuclei and vessels, staining);
    pyramid: the pyramidal TIFF writer.

Importing the package, ``layout``, ``cohort`` or ``hest_bench`` loads only the standard library
(Snakefiles import the layout, and parsing them must stay fast).
"""

from histofuse.demo.cohort import write_demo_cohort
from histofuse.demo.hest_bench import write_demo_hest_bench

__all__ = ["write_demo_cohort", "write_demo_hest_bench"]

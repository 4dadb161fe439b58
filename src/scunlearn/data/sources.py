"""Where the built-in datasets come from (no numpy or scanpy: the Snakefile reads this at parse time)."""

PBMC33K_URL = (
    "https://cf.10xgenomics.com/samples/cell-exp/1.1.0/pbmc33k/"
    "pbmc33k_filtered_gene_bc_matrices.tar.gz"
)
PBMC33K_ARCHIVE = "pbmc33k_filtered_gene_bc_matrices.tar.gz"

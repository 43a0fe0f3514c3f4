"""Product matching as the Kaggle competition scored it: for every posting, the postings of the same product.

Cosine nearest neighbours of L2-normalised embeddings (search.py: k <= 50, an exact faiss index or an
approximate HNSW graph), a similarity threshold, the posting itself always included, optionally neighbour
blending and the winners' "min-2" rule (settings.py, calibrated on label groups the network never trained
on), unions with identical `image_phash` and title TF-IDF neighbours (titles.py), scored by mean per-row F1
(scoring.py). catalog.py answers which catalogue listings match new photos, for `match --catalog` and `serve`
alike; jobs.py is the `match` command's work on files.
"""

from .catalog import Catalogue, CatalogMatch, Found, embed_for_matching, match_catalog, matching_source, source_line
from .jobs import (MatchResult, match_new_listings, match_postings, match_table, read_catalog, read_embeddings,
                   refuse_with_catalog, same_layout, write_catalog_matches, write_submission)
from .scoring import Score, group_halves, restrict, same_value, score, true_matches, union
from .search import HNSW_EF_SEARCH, blend_neighbours, faiss_index, knn, neighbours, resolve_index
from .settings import THRESHOLD_GRID, Calibration, MatchSettings, calibrate, find, settings_for, shopee_draws, tune
from .titles import title_knn, title_neighbours

__all__ = ["Catalogue", "CatalogMatch", "Found", "embed_for_matching", "match_catalog", "matching_source", "source_line",
           "MatchResult", "match_new_listings", "match_postings", "match_table", "read_catalog", "read_embeddings",
           "refuse_with_catalog", "same_layout", "write_catalog_matches", "write_submission", "Score", "group_halves",
           "restrict", "same_value", "score", "true_matches", "union", "HNSW_EF_SEARCH", "blend_neighbours",
           "faiss_index", "knn", "neighbours", "resolve_index", "THRESHOLD_GRID", "Calibration",
           "MatchSettings", "calibrate", "find", "settings_for", "shopee_draws", "tune", "title_knn", "title_neighbours"]

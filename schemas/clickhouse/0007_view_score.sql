-- Generated from schemas/src/score.rs (the experience score) by the line below.
-- qoe_views gains each view's experience score and its parts (README.md, "Experience score"),
-- computed from the view's totals with the same formula as a slice's, top rendition 8000 kbps.
-- A plain view: re-creating it moves no data.

-- qoe:generate view-score

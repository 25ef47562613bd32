"""MaMA: multi-view, multi-scale vision-language pre-training for mammography."""

"""`diffii evaluate`: what synthetic images do to a classifier, by the published downstream protocol."""

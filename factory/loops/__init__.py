"""Self-consuming loops: generators trained on their own outputs, generation after generation
(replace, accumulate, fresh data, correction, SIMS negative guidance), with provable lineage."""

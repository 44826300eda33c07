"""Budgets: which limits cover a request and how much room they have. Counters and covering
budgets (`book`), calendar windows (`windows`), admission and settlement (`admission`), the
answer at the cap (`refusal`), seat plans (`plans`) and the crash-proof reservation journal
(`journal`)."""

"""Differential privacy: calibration, accounting, the per-site budget ledger, and admission.

One module per concern, each small and as pure as it can be:

- :mod:`calibration` — the noise multiplier a job needs to stay within its target epsilon.
- :mod:`accountant` — epsilon of a history of Gaussian releases (Opacus' RDP or PRV accountant).
- :mod:`ledger` — the site's persistent record of what each job spent on its data.
- :mod:`admission` — whether a job may run at a site: its policy and its remaining budget.
- :mod:`site` — the client-side guard that ties them together round by round.

docs/privacy.md explains the guarantees and their limits.
"""

"""The paper's recipes, written once over the engine: how every robustness figure is measured (``protocol``), the
steps shared by the CLI, the app and the notebooks (``pipeline``), the paper's experiments as generators
(``experiments``) and the vulnerability study (``study``)."""

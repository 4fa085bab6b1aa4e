"""Make every page run inside app.py's navigation, even when it is the first URL a fresh server sees.

Streamlit treats an app with a ``pages/`` folder as an old-style (v1) multipage app until the
entrypoint calls ``st.navigation`` once in the process. So when the very first request to a new
server is a deep link such as ``/attack_lab?lab_eps=16``, Streamlit runs ``pages/attack_lab.py``
on its own: no app.py, no sidebar dataset choice, no page settings. :func:`through_app` notices
(app.py marks every session it runs in) and reruns the script through app.py, which keeps the
requested page and its query parameters.

This is the project's one workaround of Streamlit's internals. It relies on two facts of Streamlit
1.59-1.x: the class attribute ``PagesManager.uses_pages_directory`` exists, and ``st.navigation``'s first call
sets it to False (which is all the shim does, early). ``tests/test_app.py::
test_the_single_streamlit_shim_matches_the_streamlit_it_runs_on`` fails loudly when a release changes either,
and requirements.txt keeps Streamlit below 2 until that test has passed on it.
"""
from __future__ import annotations

import streamlit as st


def through_app() -> None:
    """Call first in every page: rerun through app.py if app.py has not run in this session."""
    if st.session_state.get("_configured"):
        return
    try:
        from streamlit.runtime.pages_manager import PagesManager   # deferred: a Streamlit internal, guarded
    except ImportError:                 # a future Streamlit without the v1 fallback: nothing to do
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False    # what st.navigation itself does on its first call
        st.rerun()

"""Streamlit state, by concern (import the module you need: ``from webapp.state import data, models``).

    data      which dataset the sidebar chose, its images (cached per process), the torch device
    models    the zoo's models and δs (``st.cache_resource``, shared by every session: only read, never
              trained) and the models trained live in this session (``st.session_state``)
    uploads   a visitor's uploaded checkpoint: checked before anything is built, kept in the session
    results   where results are kept: under a key made of page, dataset, model (with its hash) and settings
              (:class:`webapp.settings.Ref`); zoo models' results in a process-wide store shared by
              sessions, private models' in the session; the shipped precomputed results come last
"""

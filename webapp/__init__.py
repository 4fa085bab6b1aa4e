"""The Streamlit demonstrator's helpers (``streamlit run app.py``).

    jobs         Streamlit-free: uat_core.experiments' generators as jobs pumped in small time slices
    scheduler    Streamlit-free: the process-wide queue that lets N jobs compute at once
    budget       Streamlit-free: a page's estimated cost and the server's cap on it
    settings     the settings of every page, their defaults per dataset and their cache keys
    precompute   ``python -m webapp.precompute``: the shipped default results every page opens with
    state        Streamlit: cached data/models/results, the dataset choice, the model picker, uploads
    live         Streamlit: Run/Stop buttons and the fragment that advances a job a slice at a time
    ui           Streamlit: small shared drawing helpers (metrics, δ pictures, downloads)
    page         Streamlit: the opening every page shares (data, title, sidebar, model, keys, Run)
    boot         Streamlit: every page runs inside app.py's navigation, even as a fresh server's first URL
    cifar        Streamlit: the sidebar's CIFAR-10 download button and bar (uat_core.download does the work)

Run the demonstrator with ``streamlit run app.py`` (add ``-- --data-root DIR`` or set ``UAT_DATA`` for
CIFAR-10); regenerate the shipped default results with ``python -m webapp.precompute --dataset digits``.

``uat_core`` knows nothing of Streamlit; everything Streamlit-specific lives here.
"""

"""The Streamlit demonstrator's helpers (``streamlit run app.py``).

    pages_spec   Streamlit-free: every page described once (id, file, title, section, settings and their
                 defaults per dataset, the experiment it runs, its cost, its shipped result), in display order
    jobs         Streamlit-free: uat_core.recipes.experiments' generators as jobs pumped in small time slices
    scheduler    Streamlit-free: the process-wide queue that lets N jobs compute at once
    budget       Streamlit-free: the unit of a page's estimated cost and the server's cap on it
    settings     Streamlit-free: datasets (from uat_core's profiles) and the app's choices on them, labels,
                 the cache keys of results
    precompute   ``python -m webapp.precompute``: the shipped default results every page opens with
    state        Streamlit, by concern: data (dataset choice, images, device), models (zoo, session),
                 uploads (checked checkpoints), results (stores, what a page shows)
    live         Streamlit: Run/Stop buttons and the fragment that advances a job a slice at a time
    ui           Streamlit: small shared drawing helpers (metrics, δ pictures, downloads)
    page         Streamlit: the opening every page shares (data, title, sidebar, model, keys, Run)
    boot         Streamlit: every page runs inside app.py's navigation, even as a fresh server's first URL
    cifar        Streamlit: the sidebar's CIFAR-10 download button and bar (uat_core.engine.download does the work)

Run the demonstrator with ``streamlit run app.py`` (add ``-- --data-root DIR`` or set ``UAT_DATA`` for
CIFAR-10); regenerate the shipped default results with ``python -m webapp.precompute --dataset digits``.

``uat_core`` knows nothing of Streamlit; everything Streamlit-specific lives here.
"""

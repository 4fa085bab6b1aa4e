"""Notebook 1: what a universal perturbation is; Alg. 2 step by step; four optimizers; δ's evolution; export."""
from _build_notebooks import code, exercise, md, setup_cell, solution_code, solution_md

NAME = "01_universal_perturbations.ipynb"


def cells():
    return [
        md(r"""
        # 1 · Universal perturbations and Alg. 2

        *Shafahi, Najibi, Xu, Dickerson, Davis & Goldstein, "Universal Adversarial Training", AAAI 2020*
        ([arXiv:1811.11304](https://arxiv.org/abs/1811.11304)).

        In this notebook you will

        1. see **one** small perturbation δ fool a classifier on most images it has never seen;
        2. write the paper's attack, **Alg. 2**, in a dozen lines of PyTorch and check it against the engine;
        3. watch it run live, then race its **four optimizers** (SGD, momentum, ADAM, sign gradient);
        4. watch δ **evolve** step by step, see why **δ = 0 is a bad place to start** (fixed patterns and the
           strong attack), and **export** δ as `.pt`, `.npy`, `.png` and `.gif`;
        5. see **what makes one classifier fall further than another** under the same attack (the study).

        Run the cells from top to bottom (*Run ▸ Run All Cells* works too). Cells that compute something
        print how long they took. The models come from the project's **zoo** (`assets/models/`), so nothing
        waits on training.
        """),
        setup_cell("""
        if FAST:
            TRAIN_SIZE, TEST_SIZE, EPOCHS = 128, 100, 1         # CI smoke run: seconds
        elif USE_CIFAR:
            TRAIN_SIZE, TEST_SIZE, EPOCHS = 2000, 2000, 5       # ResNet-20 on a CPU: a minute or so per attack
        else:
            TRAIN_SIZE, TEST_SIZE, EPOCHS = 1297, 500, 5        # all digits: seconds per attack
        """, imports="""
        import torch.nn.functional as F
        from uat_core.engine.attacks import OPTIMIZERS, AttackConfig, UniversalAttack
        from uat_core.engine.constraints import apply, project
        from uat_core.engine.losses import clipped_cross_entropy
        from uat_core.engine.models import frozen
        from uat_core.recipes.pipeline import make_attack
        """),

        md(r"""
        ## 1. One perturbation for every image

        A classic adversarial example is made **per image**: for each $x$ with label $y$ find a small $\delta_x$,
        $\|\delta_x\|_\infty \le \epsilon$, such that the classifier $f$ gets $x + \delta_x$ wrong.
        A **universal** perturbation is a *single* $\delta$ that works for (most of) the images at once:

        $$\text{find } \delta \text{ with } \|\delta\|_\infty \le \epsilon \quad\text{such that}\quad
          f(x + \delta) \ne y \ \text{ for most } (x, y) \sim \mathcal{D}.$$

        It is computed once, from training images, and then added to inputs it has never seen, which makes it
        cheap for an attacker (no gradient per image at attack time). $\epsilon$ is measured in 0-255 pixel
        units: $\epsilon = 8$ means no pixel moves by more than $8/255$.

        The zoo ships a naturally trained model together with a universal perturbation made against it.
        Let us measure what that one tensor does to the **test** images.
        """),
        code(r"""
        model, meta = zoo.load_zoo_model(ZOO["natural"])          # a naturally trained classifier
        delta_zoo = zoo.load_zoo_perturbation(ZOO["natural"])     # its shipped universal δ: (C,H,W), pixel units
        m0 = evaluate(model, test.images, test.labels, delta_zoo, test.num_classes)

        print(f"model: {ZOO['natural']} ({meta['arch']}), δ of shape {tuple(delta_zoo.shape)}, "
              f"‖δ‖∞ = {255 * delta_zoo.abs().max():.1f}/255")
        print(f"clean test accuracy          {100 * m0['clean_top1']:5.1f} %")
        print(f"the same images + the ONE δ  {100 * m0['perturbed_top1']:5.1f} %   "
              f"(fooling ratio {100 * m0['fooling_ratio']:.1f} %: predictions that changed)")
        """),
        code(r"""
        x16 = test.float_images(slice(0, 16))                     # (16,C,H,W) in [0,1]
        top_clean, _ = predict(model, x16)                        # (16,k) top-k labels
        top_pert, conf = predict(model, x16, delta_zoo)
        display(Markdown("Rows alternate: clean images with the model's prediction, then the same images + δ "
                         "with the prediction and its confidence (**red = wrong**)."))
        display(export.comparison_grid(x16, delta_zoo, test.classes, top_clean[:, 0], top_pert[:, 0],
                                       test.labels[:16], conf, scale=3))
        display(Markdown("δ itself, drawn as δ/(2ε) + 0.5: grey is 0, black is −ε, white is +ε."))
        display(export.delta_image(delta_zoo, EPS / 255, scale=6))
        """),

        md(r"""
        ## 2. Alg. 2, step by step

        The paper finds $\delta$ by **stochastic gradient ascent** on the average loss of the perturbed training
        images. The per-image cross-entropy $\ell$ is **clipped** at $\beta$ (eq. 3; notebook 2 shows why):

        $$\max_{\|\delta\|_\infty \le \epsilon}\; \mathcal{L}(\delta) = \frac{1}{N}\sum_{i=1}^{N}
          \min\big\{\ell(w, x_i + \delta),\ \beta\big\}.$$

        The weights $w$ stay **frozen**; only $\delta$ moves. One step of **Alg. 2** on a minibatch $B$:

        $$g = \nabla_\delta\, \frac{1}{|B|}\sum_{i \in B} \min\{\ell(w, x_i + \delta), \beta\}, \qquad
          \delta \leftarrow \mathcal{P}_\epsilon\big(\delta + \tau\,\operatorname{sign}(g)\big),$$

        where $\mathcal{P}_\epsilon$ projects back onto the $\epsilon$-ball (for $\ell_\infty$: clamp every
        entry to $[-\epsilon, \epsilon]$), $\tau$ is the step size, and $x_i + \delta$ is clamped to valid
        pixels $[0, 1]$. Repeat over minibatches for a few epochs, starting from $\delta = 0$. The sign step
        is one of four update rules (section 4); it is the engine's default.

        Here is the whole loop written out with plain PyTorch. Read it line by line.
        """),
        code(r"""
        hand_set = train.subset(256)                                # (at most) 256 images
        X, Y = hand_set.float_images(), hand_set.labels            # (N,C,H,W) in [0,1], (N,)
        eps, tau, beta, bs = EPS / 255, 0.1 * EPS / 255, 9.0, 128    # pixel units; τ = ε/10
        order_rng = torch.Generator().manual_seed(0)

        delta = torch.zeros(hand_set.shape, requires_grad=True)    # (C,H,W): ONE perturbation for all images
        with frozen(model):                                        # eval mode; the weights get no gradient
            for epoch in range(2):
                order = torch.randperm(len(X), generator=order_rng)
                for start in range(0, len(X), bs):
                    idx = order[start:start + bs]
                    logits = model(apply(X[idx], delta))                    # f(clamp(x + δ)): (B,K)
                    loss = clipped_cross_entropy(logits, Y[idx], beta)      # mean of min(CE, β) over the batch
                    g, = torch.autograd.grad(loss, delta)                   # (C,H,W)
                    with torch.no_grad():
                        delta += tau * g.sign()                             # ascent: the loss goes UP
                        delta.copy_(project(delta, eps))                    # back into the ε-ball
        by_hand = delta.detach()
        print(f"after {2 * math.ceil(len(X) / bs)} steps: ‖δ‖∞ = {255 * by_hand.abs().max():.1f}/255")
        """),
        md(r"""
        The engine's `UniversalAttack` runs exactly this loop (plus bookkeeping: history, snapshots, stopping).
        With the same images, seed and settings it must give the **same** δ:
        """),
        code(r"""
        cfg = AttackConfig(eps=EPS, beta=9.0, optimizer="pgd", step_size=0.1 * EPS, epochs=2, batch_size=128, seed=0)
        engine = UniversalAttack(model, X, Y, cfg).run()
        diff = (engine.delta - by_hand).abs().max().item()
        print(f"largest difference between the engine's δ and ours: {255 * diff:.2e}/255")
        assert diff < 1e-6, "the hand-written loop and the engine disagree"
        """),

        md(r"""
        ## 3. Watching Alg. 2 run

        Every run in `uat_core` is a stream of events: `for ev in run:` advances it one minibatch at a time.
        The cell below draws the minibatch accuracy on $x + \delta$ and the clipped loss as the attack goes,
        and shows δ itself every few steps. The curves are built by the same `uat_core.plots` functions as the
        app, wrapped in a live `go.FigureWidget`.
        """),
        code(r"""
        total = EPOCHS * math.ceil(len(train) / 128)               # minibatch steps (batch size 128)
        cfg = AttackConfig(eps=EPS, beta=9.0, optimizer="pgd", epochs=EPOCHS, seed=0,
                           snapshot_every=max(1, total // 24))      # about 24 pictures of δ over the run
        run = UniversalAttack(model, train.float_images(), train.labels, cfg)
        curve = go.FigureWidget(plots.attack_curve([]))
        picture = go.FigureWidget(plots.delta_figure(torch.zeros(train.shape), EPS / 255, title="δ"))
        display(curve, picture)

        every = max(1, run.total // 40)                            # redraw about 40 times
        for ev in run:
            if ev.kind == "step" and ev.step % every == 0:
                plots.refresh(curve, plots.attack_curve(run.history))
            if ev.delta is not None:
                plots.refresh(picture, plots.delta_figure(ev.delta, EPS / 255, title=f"δ after step {ev.step}"))
        plots.refresh(curve, plots.attack_curve(run.history))
        result = run.result

        m1 = evaluate(model, test.images, test.labels, result.delta, test.num_classes)
        print(f"{result.steps} steps in {result.seconds:.1f} s on {len(train)} training images")
        print(f"test accuracy: clean {100 * m1['clean_top1']:.1f} % -> with this δ {100 * m1['perturbed_top1']:.1f} %"
              f"   (the zoo's δ: {100 * m0['perturbed_top1']:.1f} %)")
        """),
        md(r"""
        The curve shows accuracy on the **training minibatches** the attack sees; the printout measures δ on
        **test** images it never saw. That the two agree is the point: a universal perturbation generalises.
        """),

        md(r"""
        ## 4. Four optimizers for δ

        Alg. 2 only needs *some* ascent direction from $g$. With $m$ a running average of gradients:

        | name in `uat_core` | update (followed by $\mathcal{P}_\epsilon$) |
        |---|---|
        | `sgd` | $\delta \leftarrow \delta + \tau\, g$ |
        | `msgd` | $m \leftarrow 0.9\, m + g,\quad \delta \leftarrow \delta + \tau\, m$ |
        | `adam` | $m \leftarrow \beta_1 m + (1-\beta_1) g,\ \ v \leftarrow \beta_2 v + (1-\beta_2) g^2,\ \ \delta \leftarrow \delta + \tau\, \hat m / (\sqrt{\hat v} + 10^{-8})$ |
        | `pgd` | $\delta \leftarrow \delta + \tau\, \operatorname{sign}(g)$ |

        ($\beta_1 = 0.9$, $\beta_2 = 0.999$ are ADAM's own constants, not the clipping $\beta$; $\hat m, \hat v$
        are bias-corrected.) The sign and ADAM steps move every pixel by about $\tau$ whatever the scale of $g$;
        SGD's step scales with $g$, which is tiny for a mean loss, so its $\tau$ is a much larger number. Each
        optimizer uses the engine's default step size (`uat_core.engine.attacks.DEFAULT_STEP`, chosen on this
        project's digits models): the race compares these **settings**, not the optimizers in the abstract.
        """),
        code(r"""
        race = go.FigureWidget(plots.race_figure({}))
        display(race)
        histories, rows = {}, []
        for opt in OPTIMIZERS:
            run = make_attack(model, train, "alg2", eps=EPS, beta=9.0, optimizer=opt, epochs=EPOCHS,
                              seed=0, snapshot_every=0)
            histories[opt] = run.history                          # the live list, filled as the run goes
            for ev in run:
                if ev.kind != "step":
                    plots.refresh(race, plots.race_figure(histories))
            res = run.result
            m = evaluate(model, test.images, test.labels, res.delta, test.num_classes)
            rows.append({"optimizer": opt, "τ (0-255)": round(res.history[0]["tau"], 2),
                         "test accuracy with δ (%)": round(100 * m["perturbed_top1"], 1),
                         "seconds": round(res.seconds, 1)})
        display(pd.DataFrame(rows))
        """),

        md(r"""
        ### Try it yourself

        Pick ε, β and the optimizer, then press **Run Alg. 2**. (The sliders only take effect when you let go.)
        The run uses the same training images as above and reports the accuracy on the test images.
        """),
        code(r"""
        eps_w = widgets.IntSlider(value=EPS, min=1, max=4 * EPS, description="ε (/255)", continuous_update=False)
        beta_w = widgets.SelectionSlider(options=[("1", 1.0), ("3", 3.0), ("5", 5.0), ("9", 9.0), ("15", 15.0),
                                                  ("∞", math.inf)], value=9.0, description="β",
                                         continuous_update=False)
        opt_w = widgets.Dropdown(options=OPTIMIZERS, value="pgd", description="optimizer")
        epochs_w = widgets.IntSlider(value=EPOCHS, min=1, max=3 * EPOCHS, description="epochs",
                                     continuous_update=False)
        button = widgets.Button(description="Run Alg. 2", button_style="primary", icon="play")
        live = go.FigureWidget(plots.attack_curve([]))
        live_delta = go.FigureWidget(plots.delta_figure(torch.zeros(train.shape), EPS / 255))
        report = widgets.Output()

        def try_attack(eps: int, beta: float, optimizer: str, epochs: int) -> dict:
            run = make_attack(model, train, "alg2", eps=eps, beta=beta, optimizer=optimizer, epochs=epochs,
                              seed=0, snapshot_every=5)
            for ev in run:
                if ev.kind == "step" and ev.step % 5 == 0:
                    plots.refresh(live, plots.attack_curve(run.history, title=f"Alg. 2, {optimizer}, ε = {eps}"))
                if ev.delta is not None:
                    plots.refresh(live_delta, plots.delta_figure(ev.delta, eps / 255, title=f"δ, step {ev.step}"))
            plots.refresh(live, plots.attack_curve(run.history, title=f"Alg. 2, {optimizer}, ε = {eps}"))
            m = evaluate(model, test.images, test.labels, run.result.delta, test.num_classes)
            with report:
                report.clear_output()
                print(f"ε = {eps}, β = {beta}, {optimizer}, {epochs} epochs: test accuracy "
                      f"{100 * m['clean_top1']:.1f} % -> {100 * m['perturbed_top1']:.1f} % "
                      f"({run.result.seconds:.1f} s)")
            return m

        button.on_click(lambda _: try_attack(eps_w.value, beta_w.value, opt_w.value, epochs_w.value))
        display(widgets.HBox([eps_w, beta_w]), widgets.HBox([opt_w, epochs_w, button]), report, live, live_delta)
        if FAST:                                                  # CI runs the callback once; nobody clicks there
            try_attack(eps_w.value, beta_w.value, opt_w.value, 1)
        """),

        md(r"""
        ## 5. How δ evolves

        The live run of section 3 kept snapshots of δ. All pictures use the same scale δ/(2ε) + 0.5, so they
        are comparable: watch the structure appear in the first steps, and the pixels saturate at ±ε.
        """),
        code(r"""
        snaps = result.snapshots                                   # [(step, δ (C,H,W)), ...]
        pick = [snaps[round(i * (len(snaps) - 1) / 7)] for i in range(8)] if len(snaps) >= 8 else snaps
        tiles = torch.stack([(d / (2 * EPS / 255) + 0.5).clamp(0, 1) for _, d in pick])
        display(export.image_grid(tiles, scale=3, captions=[f"step {s}" for s, _ in pick]))

        saturated = (result.delta.abs() >= EPS / 255 - 1e-6).float().mean().item()
        print(f"{100 * saturated:.0f} % of δ's entries sit on the boundary ±ε at the end")
        plots.race_figure({"pgd": result.history}, key="norm", smooth=1,
                          title="‖δ‖∞ (0-255 units) against the step")
        """),
        code(r"""
        def show_snapshot(i: int):
            step, d = snaps[i]
            display(export.delta_image(d, EPS / 255, scale=6))
            print(f"step {step}: ‖δ‖∞ = {255 * d.abs().max():.1f}/255")

        widgets.interact(show_snapshot, i=widgets.IntSlider(value=len(snaps) - 1, min=0, max=len(snaps) - 1,
                                                             description="snapshot", continuous_update=False));
        """),
        code(r"""
        display(Markdown("The same snapshots as an animation:"))
        Image(data=export.gif_bytes(snaps, EPS / 255, scale=6), format="gif")
        """),

        md(r"""
        ## 6. Where δ = 0 leads: fixed patterns and the strong attack

        Alg. 2 climbs the objective from δ = 0, and that objective is **not concave**: it has many hills.
        Before trusting a number "under a universal attack", compare it with the dumbest possible attack:
        a **fixed pattern** (stripes, checkerboards, a flat colour at ±ε; the same for every image, no
        optimisation). `pattern_bank` builds a few hundred of them; `score_bank` scores them all in a few
        batched forward passes. We score them on *training* images (the attack set) and keep the strongest:
        choosing on the test images would be cheating.
        """),
        code(r"""
        from uat_core.engine.attacks import StrongConfig, StrongUniversalAttack, pattern_bank, score_bank

        t0 = time.perf_counter()
        bank = pattern_bank(train.shape, EPS / 255)                            # (M,C,H,W) at the vertices of the ball
        probe = train.subset(min(256, len(train)), seed=1)
        sc = score_bank(model, bank.patterns, probe.images, probe.labels, beta=9.0)
        order = sc.acc.argsort()
        best = bank.patterns[order[0]]
        m_fixed = evaluate(model, test.images, test.labels, best, test.num_classes)
        print(f"{len(bank)} patterns scored on {len(probe)} training images in {time.perf_counter() - t0:.1f} s; "
              f"the strongest, '{bank.names[order[0]]}', leaves {100 * m_fixed['perturbed_top1']:.1f} % of the "
              f"test images correct (Alg. 2 from δ = 0 above: {100 * m1['perturbed_top1']:.1f} %)")
        display(export.delta_image(best, EPS / 255, scale=6))
        plots.bank_figure([bank.names[i] for i in order], sc.acc[order].tolist(), m_fixed["clean_top1"],
                          highlight=0, title="Accuracy on the probe images under each fixed pattern")
        """),
        md(r"""
        The **strong attack** (`StrongUniversalAttack`, or `python -m uat_core attack --strong`) uses this: it
        screens the bank and some random starts, runs Alg. 2 from the best few *and* from zero, keeps only the
        leaders after each round (successive halving), and returns the δ with the highest loss on the attack
        set. The leaderboard says which start won. Every robustness figure in this project is the strong
        attack's, with the best fixed pattern beside it (`docs/results.md`).
        """),
        code(r"""
        strong = StrongUniversalAttack(model, train.float_images(), train.labels,
                                       StrongConfig(eps=EPS, epochs=EPOCHS, snapshot_every=0)).run(progress=True)
        m_strong = evaluate(model, test.images, test.labels, strong.delta, test.num_classes)
        print(f"Alg. 2 from δ = 0 {100 * m1['perturbed_top1']:5.1f} %   best fixed pattern "
              f"{100 * m_fixed['perturbed_top1']:5.1f} %   strong attack {100 * m_strong['perturbed_top1']:5.1f} % "
              f"(winning start '{strong.config['start']}', {strong.seconds:.1f} s)")
        plots.leaderboard_bars(strong.config["leaderboard"], strong.config["start"],
                               title="The refined starts: accuracy on the attack set (red = the winner)")
        """),

        md(r"""
        ## 7. Exporting the perturbation

        `export.save_perturbation` writes δ as a tensor (`.pt`, for PyTorch), an array (`.npy`, for NumPy),
        a picture (`.png`, at the δ/(2ε)+0.5 scale) and the animation (`.gif`). The tensors hold δ in
        **pixel units** (add it to images in $[0, 1]$ and clamp). The files go to `notebooks/out/` (ignored by
        git). From a terminal, `python -m uat_core attack --checkpoint assets/models/<model>.pt --out DIR`
        writes the same files.
        """),
        code(r"""
        OUT = Path("out") / "01_universal_perturbations"
        paths = export.save_perturbation(OUT, result.delta, EPS / 255, result.snapshots)
        for kind, path in paths.items():
            print(f"{kind:4s} {path}  ({Path(path).stat().st_size:,} bytes)")

        again = export.load_perturbation(paths["pt"], train.shape)  # read it back, with shape checks
        assert torch.equal(again, result.delta)
        m2 = evaluate(model, test.images, test.labels, again, test.num_classes)
        print(f"reloaded δ: test accuracy {100 * m2['perturbed_top1']:.1f} % (same as before)")
        display(Image(filename=paths["png"]))
        """),

        md(r"""
        ## 8. Why do some classifiers fall further than others?

        The paper's natural WRN 32-10 (95.2 % clean) falls to **9.2 %** under one universal δ at ε = 8. The zoo's
        natural ResNet-20 keeps far more, even under the strong attack of section 6. The attack is the same, so
        the difference lies in the classifiers. The project's **vulnerability study** (`uat_core/recipes/study.py`, run
        by `bench/vulnerability_study.py`) trains CIFAR-10 classifiers that differ from one base recipe in **one
        factor at a time** and measures each with the same protocol (ε = 8, attack built on 2,000 training
        images, scored on all 10,000 test images). Its results ship in `docs/study/`:
        """),
        code(r"""
        from uat_core.recipes import study

        rows = study.load_results()                      # base first, then the most vulnerable rows
        if rows:
            display(go.FigureWidget(plots.study_figure(rows)))
            display(pd.DataFrame([{"row": r["row"], "factor": r["factor"], "change": r["change"],
                                   "clean %": 100 * r["clean_top1"], "train %": 100 * r["train_top1"],
                                   "Alg. 2 %": 100 * r["alg2_top1"], "best fixed %": 100 * r["fixed_top1"],
                                   "strong %": 100 * r["strong_top1"]} for r in rows]).round(1))
        else:
            print("no study rows measured yet: python bench/vulnerability_study.py --rows base,ls01")
        """),
        md(r"""
        Two natural classifiers of about the same clean accuracy can keep very different shares under the same
        attack. Below, on CIFAR-10 (the study's models are CIFAR-10 classifiers), the zoo's natural model **A** and
        the shipped study model **B** nearest to it in clean accuracy (`zoo.natural_twin`) are each scored clean,
        under their own shipped δ and under each other's. If B's δ fools A less than A's own δ does, what makes B fall is B itself, not a stronger
        pattern.
        """),
        code(r"""
        TWIN = zoo.natural_twin("cifar10")               # (A's manifest entry, B's), or None: no study model shipped
        if USE_CIFAR and TWIN:
            A_entry, B_entry = TWIN
            pair = {"A": A_entry["name"], "B": B_entry["name"]}
            models = {k: zoo.load_zoo_model(n)[0] for k, n in pair.items()}
            deltas = {k: zoo.load_zoo_perturbation(n) for k, n in pair.items()}
            matrix, sources, targets = experiments.transfer_matrix(models, deltas, test)   # rows: δ of; cols: model
            print(f"B = {B_entry['name']} ({B_entry['study_factor']}: {B_entry['study_change']})")
            under = {(s, t): matrix[i][j] for i, s in enumerate(sources) for j, t in enumerate(targets)}
            for k, other in (("A", "B"), ("B", "A")):
                clean = experiments.top1_under(models[k], test, None)
                print(f"{k}: clean {100 * clean:5.1f} %   own δ {100 * under[k, k]:5.1f} %   "
                      f"{other}'s δ {100 * under[other, k]:5.1f} %")
            display(widgets.HBox([widgets.Image(value=export.png_bytes(export.delta_image(deltas[k], EPS / 255, 6)),
                                                width=160) for k in ("A", "B")]))
        else:
            print("The side-by-side needs CIFAR-10 ($UAT_DATA) and a shipped study model "
                  "(python -m uat_core.zoo add-study --row ROW); the app's page 'Why some models fall' shows it too.")
        """),

        md(r"""
        ## Exercises

        **1. Universal against per-instance.** Per-instance FGSM builds one perturbation *per test image*:
        $x' = \operatorname{clamp}\big(x + \epsilon\, \operatorname{sign}(\nabla_x \ell(w, x, y))\big)$.
        Implement it for the test set at the same ε and compare its accuracy with the universal δ's.
        Which is stronger? Why is the universal result still remarkable?
        """),
        exercise("Exercise 1"),
        solution_code(r"""
        def fgsm_accuracy(model, data, eps: int, batch_size: int = 250) -> float:
            correct = 0
            with frozen(model):
                for x, y in data.batches(batch_size):
                    x = x.requires_grad_(True)
                    g, = torch.autograd.grad(F.cross_entropy(model(x), y), x)      # one gradient PER image
                    x_adv = (x + eps / 255 * g.sign()).clamp(0, 1)
                    correct += (model(x_adv).argmax(1) == y).sum().item()
            return correct / len(data)

        print(f"per-instance FGSM: {100 * fgsm_accuracy(model, test, EPS):.1f} %   "
              f"universal δ: {100 * m1['perturbed_top1']:.1f} %")
        """),
        solution_md(r"""
        Per-instance FGSM is usually at least as strong: it adapts to each image and looks at the test image's
        own gradient. The universal δ never saw the test images, is a single tensor, and costs nothing at
        attack time, yet it takes away a large share of the accuracy (on digits most of it; on the shipped
        CIFAR-10 ResNet-20 about a fifth at ε = 8 and most of it at ε = 16, see exercise 3). That is what makes
        it a threat (and a cheap thing to defend against during training: notebook 3). Section 6 shows that Alg. 2
        from δ = 0 under-states how much a universal δ can take: the strong attack takes more.
        """),
        md(r"""
        **2. A targeted universal perturbation.** `make_attack(..., target=t)` makes Alg. 2 push *every* image
        towards class `t` (it maximises $-\min\{\ell(w, x+\delta, t), \beta\}$). Build one for a class of your
        choice and measure how many test images (not already of class `t`) it sends there:
        `evaluate(..., target=t)["target_rate"]`.
        """),
        exercise("Exercise 2"),
        solution_code(r"""
        t = 3
        res_t = make_attack(model, train, "alg2", eps=EPS, beta=9.0, epochs=EPOCHS, target=t, seed=0,
                            snapshot_every=0).run()
        m_t = evaluate(model, test.images, test.labels, res_t.delta, test.num_classes, target=t)
        print(f"target '{test.classes[t]}': {100 * m_t['target_rate']:.1f} % of the other test images now "
              f"predicted as it; accuracy {100 * m_t['perturbed_top1']:.1f} %")
        display(export.delta_image(res_t.delta, EPS / 255, scale=6))
        """),
        md(r"""
        **3. How small can ε be, and what does a larger one do?** Predict first, then measure: the test accuracy
        under Alg. 2 at ε/4, ε/2, ε and 2ε.
        """),
        exercise("Exercise 3"),
        solution_code(r"""
        for e in (EPS // 4, EPS // 2, EPS, 2 * EPS):
            res_e = make_attack(model, train, "alg2", eps=e, beta=9.0, epochs=EPOCHS, seed=0, snapshot_every=0).run()
            acc = evaluate(model, test.images, test.labels, res_e.delta, test.num_classes)["perturbed_top1"]
            print(f"ε = {e:3d}/255: test accuracy {100 * acc:5.1f} %")
        """),
        solution_md(r"""
        The accuracy falls steeply with ε: a budget a few times smaller leaves almost every image correctly
        classified, and past a threshold each extra unit of ε costs many points. Where the drop happens
        depends on the model and the data: digits need a much larger ε than CIFAR-10. Alg. 2 from δ = 0 leaves a
        well-trained CIFAR-10 ResNet-20 most of its accuracy at ε = 8 and takes most of it at 2ε = 16; the strong
        attack of section 6 takes considerably more at ε = 8 (the paper's much larger WRN 32-10 falls from 95.2 %
        to 9.2 % already at ε = 8; docs/results.md has our figures for every attack).
        """),
    ]

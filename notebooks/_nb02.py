"""Notebook 2: why the loss is clipped at β; the β sweep; how much data the attack needs."""
from _build_notebooks import code, exercise, md, setup_cell, solution_code, solution_md

NAME = "02_clipped_loss_and_data.ipynb"


def cells():
    return [
        md(r"""
        # 2 · The clipped loss and how much data the attack needs

        Alg. 2 (notebook 1) ascends the **clipped** cross-entropy of eq. 3,

        $$\mathcal{L}(\delta) = \frac{1}{N}\sum_{i=1}^{N} \min\big\{\ell(w, x_i + \delta),\ \beta\big\}.$$

        This notebook asks two questions the paper studies:

        1. **Why clip at β?** We look inside the gradient to see which images steer δ, then sweep β.
        2. **How many images does the attack need?** We build δ from 25 to 1000 images and test it on
           images it never saw.

        Both sweeps run many attacks: each cell prints its time. Lower `REPEATS` in the setup cell to go faster.
        """),
        setup_cell("""
        if FAST:
            TRAIN_SIZE, TEST_SIZE, ATTACK_SIZE, EPOCHS = 256, 100, 128, 1
            BETAS, REPEATS, SIZES, SIZE_REPEATS, STEPS = (1, 9, math.inf), 1, (32, 128), 1, 2
        elif USE_CIFAR:
            TRAIN_SIZE, TEST_SIZE, ATTACK_SIZE, EPOCHS = 4000, 2000, 1000, 5
            BETAS, REPEATS, SIZES, SIZE_REPEATS, STEPS = (1, 3, 9, 15, math.inf), 2, (100, 500, 2000, 4000), 1, 40
        else:
            TRAIN_SIZE, TEST_SIZE, ATTACK_SIZE, EPOCHS = 1297, 500, 500, 5
            BETAS, REPEATS, SIZES, SIZE_REPEATS, STEPS = (1, 3, 5, 9, 15, math.inf), 2, (25, 50, 100, 250, 500, 1000), 2, 30
        """, imports="""
        from uat_core.engine.attacks import OPTIMIZERS
        from uat_core.engine.constraints import apply
        from uat_core.engine.losses import clipped_cross_entropy
        from uat_core.engine.models import frozen
        from uat_core.recipes.pipeline import make_attack
        """),

        md(r"""
        ## 1. Why clip the loss?

        The cross-entropy $\ell = -\log p_y$ is **unbounded**: once an image is misclassified with confidence,
        its loss keeps growing as δ pushes it further. In the plain average those already-fooled images
        contribute the *largest* terms and, typically, the largest gradients, so they dominate the direction
        in which δ moves, although they need no more help. Clipping fixes that:

        $$\frac{\partial}{\partial \delta} \min\{\ell_i, \beta\} =
          \begin{cases} \nabla_\delta \ell_i & \ell_i < \beta \\ 0 & \ell_i > \beta \end{cases}
          \qquad\Longrightarrow\qquad
          \nabla_\delta \mathcal{L} = \frac{1}{N} \sum_{i:\ \ell_i < \beta} \nabla_\delta \ell_i .$$

        Images with a loss above β stop steering δ; the step is spent on the images that still resist.
        $\beta = \infty$ is the plain cross-entropy.
        """),
        code(r"""
        ce_axis = torch.linspace(0, 20, 201)
        fig = go.Figure([go.Scatter(x=ce_axis.numpy(), y=ce_axis.clamp(max=b).numpy(), name="β = ∞" if math.isinf(b) else f"β = {b}")
                         for b in (1, 3, 9, math.inf)])
        fig.update_layout(title="What each image contributes: min(ℓ, β)", xaxis_title="per-image cross-entropy ℓ",
                          yaxis_title="contribution to the loss", **plots.LAYOUT)
        fig
        """),
        md(r"""
        Now measure it on a real model. We take the zoo's natural model and its shipped δ, and look at three
        moments of an attack: the start ($\delta = 0$), half-way ($\delta/2$) and the end (the full δ). At each,
        we split the gradient of the **plain** mean cross-entropy into the part coming from images that are
        already fooled and the part from images that are not:
        """),
        code(r"""
        model, meta = zoo.load_zoo_model(ZOO["natural"])
        delta_zoo = zoo.load_zoo_perturbation(ZOO["natural"])        # (C,H,W), pixel units
        attack_set = train.subset(ATTACK_SIZE)
        X, Y = attack_set.float_images(), attack_set.labels          # (N,C,H,W), (N,)
        BETA = 9.0

        def loss_parts(delta):
            '''Per-image CE at x + δ, the fooled mask, and ∇δ of the mean CE split into fooled / not fooled.'''
            with frozen(model):
                d = delta.clone().requires_grad_(True)
                logits = model(apply(X, d))                              # (N,K)
                ce = clipped_cross_entropy(logits, Y, reduction="none")  # (N,): β = ∞, the plain CE
                fooled = logits.argmax(1) != Y
                g_fooled, = torch.autograd.grad(ce[fooled].sum() / len(Y), d, retain_graph=True)
                g_rest, = torch.autograd.grad(ce[~fooled].sum() / len(Y), d)
            return ce.detach(), fooled, g_fooled, g_rest

        rows, losses = [], {}
        for name, d in (("start: δ = 0", 0 * delta_zoo), ("half-way: δ/2", delta_zoo / 2), ("end: δ", delta_zoo)):
            ce, fooled, g_f, g_r = loss_parts(d)
            losses[name] = ce
            agree = ((g_f + g_r).sign() == g_r.sign()).float().mean().item()
            rows.append({"moment": name, "fooled (%)": round(100 * fooled.float().mean().item(), 1),
                         f"ℓ > β = {BETA:g} (%)": round(100 * (ce > BETA).float().mean().item(), 1),
                         "‖∇ from fooled‖": round(g_f.norm().item(), 4), "‖∇ from the rest‖": round(g_r.norm().item(), 4),
                         "sign(∇) agrees with the rest's (%)": round(100 * agree, 1)})
        display(pd.DataFrame(rows))

        fig = go.Figure([go.Histogram(x=ce.numpy(), name=name, opacity=0.6, nbinsx=40) for name, ce in losses.items()])
        fig.add_vline(x=BETA, line_dash="dash", annotation_text=f"β = {BETA:g}")
        fig.update_layout(barmode="overlay", title="Per-image cross-entropy on x + δ",
                          xaxis_title="ℓ", yaxis_title="images", **plots.LAYOUT)
        fig
        """),
        md(r"""
        Read the table from top to bottom. As the attack progresses, more images are fooled and their share of
        the gradient grows; by the end the images that still resist contribute little to the plain gradient,
        and even its **sign**, all that the sign step uses, partly points where the fooled images want it.
        Clipping at β removes exactly the terms above the dashed line.

        A quick check of the formula above: the gradient of the clipped loss equals the gradient of the sum
        over the images below β only.
        """),
        code(r"""
        with frozen(model):
            d = delta_zoo.clone().requires_grad_(True)
            logits = model(apply(X, d))
            g_clipped, = torch.autograd.grad(clipped_cross_entropy(logits, Y, beta=BETA), d, retain_graph=True)
            ce = clipped_cross_entropy(logits, Y, reduction="none")
            g_below, = torch.autograd.grad(ce[ce < BETA].sum() / len(Y), d)
        print(f"{int((ce >= BETA).sum())} of {len(Y)} images are above β and get zero weight; "
              f"largest difference between the two gradients: {(g_clipped - g_below).abs().max():.2e}")
        assert torch.allclose(g_clipped, g_below, atol=1e-7)
        """),

        md(r"""
        ## 2. The β sweep

        Does clipping make a stronger attack? For each β we build δ on a random subset of the training images
        (`REPEATS` different subsets and seeds) and measure the **test** accuracy under δ: lower means a
        stronger attack. The error bars are the spread over repeats: a difference smaller than them is noise.
        The paper reports this experiment on CIFAR-10; your model and data may behave differently.
        """),
        code(r"""
        t0 = time.perf_counter()
        beta_fig = go.FigureWidget(plots.sweep_figure([], [], [], x_title="β", title="Accuracy under attack against β"))
        display(beta_fig)
        beta_rows = []
        for row in experiments.beta_sweep(model, train, test, betas=BETAS, repeats=REPEATS, attack_size=ATTACK_SIZE,
                                          eps=EPS, epochs=EPOCHS):
            beta_rows.append(row)
            xs, means, stds = experiments.summarize(beta_rows, "beta")
            plots.refresh(beta_fig, plots.sweep_figure(xs, means, stds, x_title="β",
                                                       title="Accuracy under attack against β"))
        print(f"{len(beta_rows)} attacks in {time.perf_counter() - t0:.0f} s")

        best = min(range(len(xs)), key=lambda i: means[i])
        print(f"strongest attack here: β = {xs[best]} ({100 * means[best]:.1f} % ± {100 * stds[best]:.1f})")
        if math.inf in xs:
            k = xs.index(math.inf)
            gap, spread = 100 * (means[k] - means[best]), 100 * max(stds[k], stds[best])
            verdict = "larger than" if gap > 2 * spread and REPEATS > 1 else "not clearly larger than"
            print(f"β = ∞ (plain CE): {100 * means[k]:.1f} %, {gap:.1f} points weaker, {verdict} the spread "
                  f"over repeats ({spread:.1f} points{'; one repeat only' if REPEATS == 1 else ''})")
        """),

        md(r"""
        ## 3. How much data does the attack need?

        δ is fitted on the images the attack sees and judged on test images it never saw. How few images are
        enough? To compare fairly, every attack below takes the **same number of ascent steps** (`STEPS`):
        a small attack set is passed over more often, so it is not also a shorter run (see exercise 1 for
        what happens otherwise).
        """),
        code(r"""
        t0 = time.perf_counter()
        size_fig = go.FigureWidget(plots.sweep_figure([], [], [], x_title="images the attack sees",
                                                      title=f"Accuracy under attack against data size ({STEPS} steps each)"))
        display(size_fig)
        size_rows = []
        for row in experiments.datasize_sweep(model, train, test, sizes=SIZES, repeats=SIZE_REPEATS, steps=STEPS,
                                              eps=EPS, beta=9.0):
            size_rows.append(row)
            xs_n, means_n, stds_n = experiments.summarize(size_rows, "size")
            plots.refresh(size_fig, plots.sweep_figure(xs_n, means_n, stds_n, x_title="images the attack sees",
                                                       title=f"Accuracy under attack against data size ({STEPS} steps each)"))
        print(f"{len(size_rows)} attacks in {time.perf_counter() - t0:.0f} s")
        display(pd.DataFrame({"images": xs_n, "test accuracy under δ (%)": [round(100 * m, 1) for m in means_n],
                              "± (%)": [round(100 * s, 1) for s in stds_n]}))
        """),
        md(r"""
        Read the curve: after how many images does adding more stop helping, given the spread between
        repeats? On the digits model a few dozen images were already enough; check what your run says. A
        small appetite for data is what makes universal perturbations practical for an attacker, and part of
        why universal adversarial *training* (notebook 3) can afford to build δ on the fly from minibatches.
        """),

        md(r"""
        ### Try it yourself

        Pick ε, β and the optimizer and press **Run**: the attack is built on the `ATTACK_SIZE` images above,
        then the histogram shows the per-image loss on the **test** images with β marked.
        """),
        code(r"""
        eps_w = widgets.IntSlider(value=EPS, min=1, max=4 * EPS, description="ε (/255)", continuous_update=False)
        beta_w = widgets.SelectionSlider(options=[("0.5", 0.5), ("1", 1.0), ("3", 3.0), ("9", 9.0), ("15", 15.0),
                                                  ("30", 30.0), ("∞", math.inf)], value=9.0, description="β",
                                         continuous_update=False)
        opt_w = widgets.Dropdown(options=OPTIMIZERS, value="pgd", description="optimizer")
        button = widgets.Button(description="Run", button_style="primary", icon="play")
        hist = go.FigureWidget(go.Figure(layout=dict(title="Per-image test loss under δ", **plots.LAYOUT)))
        report = widgets.Output()

        def try_beta(eps: int, beta: float, optimizer: str, epochs: int = EPOCHS) -> float:
            res = make_attack(model, attack_set, "alg2", eps=eps, beta=beta, optimizer=optimizer, epochs=epochs,
                              seed=0, snapshot_every=0).run()
            with torch.inference_mode():
                ce = clipped_cross_entropy(model(apply(test.float_images(), res.delta)), test.labels, reduction="none")
            acc = evaluate(model, test.images, test.labels, res.delta, test.num_classes)["perturbed_top1"]
            fig = go.Figure(go.Histogram(x=ce.numpy(), nbinsx=40, marker_color="#EF553B", name="test images"))
            if math.isfinite(beta):
                fig.add_vline(x=beta, line_dash="dash", annotation_text=f"β = {beta:g}")
            fig.update_layout(title=f"Per-image test loss under δ (ε = {eps}, β = {beta:g}, {optimizer})",
                              xaxis_title="ℓ", yaxis_title="images", **plots.LAYOUT)
            plots.refresh(hist, fig)
            hist.layout.shapes, hist.layout.annotations = fig.layout.shapes, fig.layout.annotations
            with report:
                report.clear_output()
                print(f"test accuracy under δ: {100 * acc:.1f} %  ({res.seconds:.1f} s)")
            return acc

        button.on_click(lambda _: try_beta(eps_w.value, beta_w.value, opt_w.value))
        display(widgets.HBox([eps_w, beta_w, opt_w, button]), report, hist)
        if FAST:                                                  # CI runs the callback once; nobody clicks there
            try_beta(eps_w.value, beta_w.value, opt_w.value, epochs=1)
        """),

        md(r"""
        ## Exercises

        **1. Equal epochs instead of equal steps.** Rerun the data-size sweep with a fixed number of epochs
        (`steps=None, epochs=EPOCHS`) instead of a fixed number of steps. How does the curve change for the
        small sets, and what would you have wrongly concluded from it?
        """),
        exercise("Exercise 1"),
        solution_code(r"""
        rows_e = list(experiments.datasize_sweep(model, train, test, sizes=SIZES, repeats=1, steps=None,
                                                 eps=EPS, beta=9.0, epochs=EPOCHS))
        display(pd.DataFrame([{"images": r["size"], "steps": r["steps"],
                               "test accuracy under δ (%)": round(100 * r["perturbed_top1"], 1)} for r in rows_e]))
        """),
        solution_md(r"""
        With a fixed number of epochs a 25-image attack takes a handful of steps, too few for the sign step
        to even reach the boundary of the ε-ball, so δ stays weak. The curve then seems to say "small sets
        make weak attacks" when the real cause is the short run. Holding the number of steps fixed separates
        the two effects.
        """),
        md(r"""
        **2. Over-fitting δ.** Build δ on only `SIZES[0]` images. Compare the accuracy under δ on those very
        images with the accuracy on the test set. What does the gap tell you?
        """),
        exercise("Exercise 2"),
        solution_code(r"""
        few = train.subset(SIZES[0], seed=0)
        res_few = make_attack(model, few, "alg2", eps=EPS, beta=9.0, epochs=max(1, STEPS), seed=0,
                              snapshot_every=0).run()
        on_own = evaluate(model, few.images, few.labels, res_few.delta, few.num_classes)["perturbed_top1"]
        on_test = evaluate(model, test.images, test.labels, res_few.delta, test.num_classes)["perturbed_top1"]
        print(f"δ from {len(few)} images: accuracy on those images {100 * on_own:.1f} %, on the test set {100 * on_test:.1f} %")
        """),
        solution_md(r"""
        δ fools the few images it was fitted on more thoroughly than new ones: it has partly memorised them.
        The gap shrinks as the attack set grows, which is the "generalisation" of a universal perturbation.
        """),
        md(r"""
        **3. Sign steps and magnitudes.** The sign optimizer throws away the gradient's magnitude. Why can
        clipping still change what it does? (Hint: the last column of the table in section 1.)
        """),
        solution_md(r"""
        The sign is taken of the *sum* over the minibatch. When the fooled images' gradients are large, they
        decide the sign of most pixels of that sum, so the step follows them even though each pixel then moves
        by exactly τ. Clipping removes their terms before the sum, so the sign follows the images that still
        resist. The column "sign(∇) agrees with the rest's" measures how often the two differ.
        """),
    ]

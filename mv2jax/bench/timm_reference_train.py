"""A stand-in for timm's train.py (not shipped in timm's wheel or sdist) for `timm_train_compare`.

It follows the code path timm's train.py (1.0.x) takes for a single-process CPU run without AMP, mixup,
grad accumulation or checkpoint saving, with timm's own library pieces: utils.random_seed, create_model (with
--initial-checkpoint its strict load_checkpoint, then the --head-init-scale multiply), resolve_data_config,
create_dataset/create_loader (RandAugment, random erasing via the prefetcher, random interpolation),
create_optimizer_v2(**optimizer_kwargs), create_scheduler_v2 (**scheduler_kwargs, updates_per_epoch=len(loader)),
utils.ModelEmaV3(decay, use_warmup), LabelSmoothingCrossEntropy for training and nn.CrossEntropyLoss for validation,
the per-update loop (forward, backward, step, zero_grad, ema.update(step=num_updates),
scheduler.step_update(num_updates)), validation of the raw model then the EMA, and utils.update_summary with the EMA
metrics and the mean param-group lr. It prints timm's 'Test:' / 'Test (EMA):' lines.
Only the flags used by mv2jax.bench.timm_train_compare are accepted (anything else is an argparse error).
"""

import argparse
import os
import time
from collections import OrderedDict


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    for name, typ, default in [
        ("--data-dir", str, None),
        ("--train-split", str, "train"),
        ("--val-split", str, "validation"),
        ("--model", str, "resnet50"),
        ("--initial-checkpoint", str, ""),
        ("--num-classes", int, None),
        ("--img-size", int, None),
        ("--crop-pct", float, None),
        ("--interpolation", str, ""),
        ("--batch-size", int, 128),
        ("--head-init-scale", float, None),
        ("--opt", str, "sgd"),
        ("--opt-eps", float, None),
        ("--momentum", float, 0.9),
        ("--weight-decay", float, 2e-5),
        ("--sched", str, "cosine"),
        ("--lr", float, None),
        ("--warmup-lr", float, 1e-5),
        ("--min-lr", float, 0.0),
        ("--epochs", int, 300),
        ("--decay-epochs", float, 90),
        ("--warmup-epochs", int, 5),
        ("--cooldown-epochs", int, 0),
        ("--decay-rate", float, 0.1),
        ("--hflip", float, 0.5),
        ("--vflip", float, 0.0),
        ("--color-jitter", float, 0.4),
        ("--aa", str, None),
        ("--reprob", float, 0.0),
        ("--remode", str, "pixel"),
        ("--recount", int, 1),
        ("--mixup", float, 0.0),
        ("--cutmix", float, 0.0),
        ("--smoothing", float, 0.1),
        ("--train-interpolation", str, "random"),
        ("--drop", float, 0.0),
        ("--drop-path", float, None),
        ("--model-ema-decay", float, 0.9998),
        ("--seed", int, 42),
        ("--log-interval", int, 50),
        ("--workers", int, 4),
        ("--output", str, ""),
        ("--experiment", str, ""),
        ("--device", str, "cuda"),
        ("--checkpoint-hist", int, 10),
    ]:
        p.add_argument(name, type=typ, default=default)
    p.add_argument("--scale", type=float, nargs="+", default=[0.08, 1.0])
    p.add_argument("--ratio", type=float, nargs="+", default=[3.0 / 4.0, 4.0 / 3.0])
    for name in ("--sched-on-updates", "--model-ema", "--model-ema-warmup"):
        p.add_argument(name, action="store_true")

    return p


def validate(model, loader, loss_fn, name):
    import torch
    from timm import utils

    losses_m, top1_m, top5_m = utils.AverageMeter(), utils.AverageMeter(), utils.AverageMeter()
    model.eval()
    last_idx = len(loader) - 1
    with torch.inference_mode():
        for x, target in loader:
            output = model(x)
            loss = loss_fn(output, target)
            acc1, acc5 = utils.accuracy(output, target, topk=(1, 5))
            losses_m.update(loss.item(), x.size(0))
            top1_m.update(acc1.item(), output.size(0))
            top5_m.update(acc5.item(), output.size(0))
    print(
        f"{name}: [{last_idx:>4d}/{last_idx}]  Loss: {losses_m.val:>7.3f} ({losses_m.avg:>6.4f})  "
        f"Acc@1: {top1_m.val:>7.3f} ({top1_m.avg:>7.3f})  Acc@5: {top5_m.val:>7.3f} ({top5_m.avg:>7.3f})",
        flush=True,
    )
    return OrderedDict([("loss", losses_m.avg), ("top1", top1_m.avg), ("top5", top5_m.avg)])


def main():
    # torch and timm load here, not on import: importing the mv2jax package never imports torch
    import torch
    import torch.nn as nn
    from timm import utils
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.models import create_model
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    args = _parser().parse_args()
    device = torch.device(args.device)
    utils.random_seed(args.seed, 0)
    model = create_model(  # as train.py: a --initial-checkpoint is load_checkpoint(model, path), strict
        args.model,
        num_classes=args.num_classes,
        drop_rate=args.drop,
        drop_path_rate=args.drop_path,
        in_chans=3,
        checkpoint_path=args.initial_checkpoint,
    )
    if args.head_init_scale is not None:
        with torch.no_grad():
            model.get_classifier().weight.mul_(args.head_init_scale)
            model.get_classifier().bias.mul_(args.head_init_scale)
    data_config = resolve_data_config(vars(args), model=model, verbose=True)
    model.to(device=device)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    model_ema = (
        utils.ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
        if args.model_ema
        else None
    )
    ds_train = create_dataset(
        "", root=args.data_dir, split=args.train_split, is_training=True, batch_size=args.batch_size, seed=args.seed
    )
    ds_eval = create_dataset(
        "", root=args.data_dir, split=args.val_split, is_training=False, batch_size=args.batch_size
    )
    loader_train = create_loader(
        ds_train,
        input_size=data_config["input_size"],
        batch_size=args.batch_size,
        is_training=True,
        re_prob=args.reprob,
        re_mode=args.remode,
        re_count=args.recount,
        scale=args.scale,
        ratio=args.ratio,
        hflip=args.hflip,
        vflip=args.vflip,
        color_jitter=args.color_jitter,
        auto_augment=args.aa,
        interpolation=args.train_interpolation,
        mean=data_config["mean"],
        std=data_config["std"],
        num_workers=args.workers,
        device=device,
        use_prefetcher=True,
    )
    loader_eval = create_loader(
        ds_eval,
        input_size=data_config["input_size"],
        batch_size=args.batch_size,
        is_training=False,
        interpolation=data_config["interpolation"],
        mean=data_config["mean"],
        std=data_config["std"],
        num_workers=args.workers,
        crop_pct=data_config["crop_pct"],
        device=device,
        use_prefetcher=True,
    )
    train_loss_fn, validate_loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing), nn.CrossEntropyLoss()
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args), updates_per_epoch=len(loader_train)
    )
    out_dir = os.path.join(args.output, args.experiment)
    os.makedirs(out_dir, exist_ok=True)
    num_updates = 0
    for epoch in range(num_epochs):
        t0, losses_m = time.time(), utils.AverageMeter()
        model.train()
        for x, target in loader_train:
            loss = train_loss_fn(model(x), target)
            loss.backward()
            optimizer.step()
            losses_m.update(loss.item(), x.size(0))
            num_updates += 1
            optimizer.zero_grad()
            if model_ema is not None:
                model_ema.update(model, step=num_updates)
            lr_scheduler.step_update(num_updates=num_updates, metric=losses_m.avg)
        lrs = [g["lr"] for g in optimizer.param_groups]
        print(f"Train: {epoch} loss {losses_m.avg:.4f} lr {lrs[0]:.3e} {time.time() - t0:.1f} s", flush=True)
        eval_metrics = validate(model, loader_eval, validate_loss_fn, "Test")
        if model_ema is not None:
            eval_metrics = validate(model_ema, loader_eval, validate_loss_fn, "Test (EMA)")
        utils.update_summary(
            epoch,
            OrderedDict([("loss", losses_m.avg)]),
            eval_metrics,
            filename=os.path.join(out_dir, "summary.csv"),
            lr=sum(lrs) / len(lrs),
            write_header=epoch == 0,
        )
        lr_scheduler.step(epoch + 1, eval_metrics["top1"])


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Download the weights and reference files that ld3 needs but cannot fetch at run time.
#
#   bash scripts/download_model.sh                   # edm fid-refs lpips inception
#   bash scripts/download_model.sh edm fid-refs      # only some groups
#   bash scripts/download_model.sh --with-sd         # the defaults plus Stable Diffusion v1.4 / v1.5
#   bash scripts/download_model.sh sd ddpm           # Hugging Face models only (needs huggingface-cli or hf)
#   bash scripts/download_model.sh adm ldm           # guided-diffusion ImageNet / CompVis LDM checkpoints (large)
#   bash scripts/download_model.sh --list            # what goes where (offline)
#   bash scripts/download_model.sh --dry-run         # what would be done (offline)
#
# NOTE: this script needs internet access. It was written and checked (bash -n, --list, --help, --dry-run)
# on a machine without internet, so the downloads themselves have not been exercised there; the URLs are
# the publishers' public ones (NVIDIA EDM CDN, download.pytorch.org, torch-fidelity's GitHub release,
# the Hugging Face Hub).
#
# Layout (the cache is $LD3_CACHE, default ~/.cache/ld3; --cache DIR overrides):
#   <cache>/weights/edm-*.pkl                 EDM network pickles        (model=edm_* configs)
#   <cache>/fid-refs/*.npz                    EDM/ADM FID reference statistics (mu, sigma)
#   <torch hub>/checkpoints/vgg16-397923af.pth, alexnet-owt-7be5be79.pth   LPIPS trunks (torchvision)
#        + links in <cache>/weights/lpips/
#   <cache>/weights/weights-inception-2015-12-05-6726825d.pth   torch-fidelity Inception-v3 for FID
#        + a link in <torch hub>/checkpoints/ (where torch-fidelity looks)
#   <cache>/weights/stable-diffusion-v1-{4,5}/  diffusers format (unet vae text_encoder tokenizer scheduler)
#   <cache>/weights/ddpm-{cifar10-32,bedroom-256,church-256}/   diffusers UNet2DModel + scheduler_config.json
#   <cache>/weights/{64x64,256x256}_{diffusion,classifier}.pt, 256x256_diffusion_uncond.pt   guided-diffusion
#        (model=adm_* configs) + <cache>/fid-refs/VIRTUAL_imagenet{64,256}_labeled.npz (ADM reference batches)
#   <cache>/weights/ldm/{lsun_beds256,lsun_churches256,cin256-v2}/model.ckpt   CompVis LDM (model=ldm_* configs;
#        the LSUN ones come as .zip archives, extracted in place) + <cache>/fid-refs/VIRTUAL_lsun_bedroom256.npz
# <torch hub> is $TORCH_HOME/hub (default ${XDG_CACHE_HOME:-~/.cache}/torch/hub), as torch.hub.get_dir().
#
# Idempotent: files already present are skipped. A file whose name carries a sha256 prefix (torchvision's
# convention, checked the same way as torch.hub's check_hash) is verified; every downloaded file's sha256 is
# recorded in <cache>/SHA256SUMS and re-checked on later runs, so a corrupted file is fetched again.
# Downloads go to a .part file that is renamed only when complete.

set -euo pipefail

usage() {
    cat <<'EOF'
usage: download_model.sh [--list] [--dry-run] [--with-sd] [--cache DIR] [GROUP ...]

Groups (default: edm fid-refs lpips inception):
  edm        NVIDIA EDM pickles: cifar10-32x32 (uncond, cond), afhqv2-64x64, ffhq-64x64 (uncond) DDPM++ ("vp"),
             imagenet-64x64 (cond ADM)
  edm-ve     NVIDIA EDM NCSN++ ("ve") pickles: cifar10-32x32 (uncond, cond), afhqv2-64x64, ffhq-64x64 (opt-in)
  fid-refs   FID reference statistics cifar10-32x32, afhqv2-64x64, ffhq-64x64, imagenet-64x64 (.npz)
  lpips      torchvision VGG-16 and AlexNet ImageNet weights (LPIPS trunks)
  inception  torch-fidelity's Inception-v3 weights (FID features)
  sd         Stable Diffusion v1.4 and v1.5, diffusers format (huggingface-cli / hf; large, opt-in)
  ddpm       DDPM CIFAR10 / LSUN bedroom / LSUN church UNets, diffusers format (huggingface-cli / hf; opt-in)
  adm        guided-diffusion ImageNet 64x64 / 256x256 U-Nets and noisy classifiers (+ their FID reference batches)
  ldm        CompVis LDM LSUN bedroom (VQ-f4), LSUN church (KL-f8), cin256-v2 (+ FID reference batches)

Options:
  --list       print every file, its source and its destination, then exit (no network)
  --dry-run    print what would be downloaded or skipped, download nothing
  --with-sd    add the sd group to the selected groups
  --cache DIR  cache directory (default: $LD3_CACHE or ~/.cache/ld3)
  -h, --help   this help
EOF
}

CACHE="${LD3_CACHE:-$HOME/.cache/ld3}"
CACHE_FLAG=0
LIST=0
DRY=0
WITH_SD=0
GROUPS_SEL=()

while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --list) LIST=1 ;;
        --dry-run) DRY=1 ;;
        --with-sd) WITH_SD=1 ;;
        --cache)
            [ $# -ge 2 ] || { echo "error: --cache needs a directory" >&2; exit 2; }
            CACHE="$2"; CACHE_FLAG=1; shift ;;
        --cache=*) CACHE="${1#--cache=}"; CACHE_FLAG=1 ;;
        -*) echo "error: unknown option '$1' (see --help)" >&2; exit 2 ;;
        *) GROUPS_SEL+=("$1") ;;
    esac
    shift
done

# torch hub (LPIPS trunks, torch-fidelity's Inception link): $TORCH_HOME/hub; with --cache and no TORCH_HOME,
# inside the cache, so that --cache writes nothing outside DIR
if [ -n "${TORCH_HOME:-}" ]; then
    TORCH_HUB="$TORCH_HOME/hub"
elif [ "$CACHE_FLAG" = 1 ]; then
    TORCH_HUB="$CACHE/torch/hub"
else
    TORCH_HUB="${XDG_CACHE_HOME:-$HOME/.cache}/torch/hub"
fi

ALL_GROUPS="edm edm-ve fid-refs lpips inception sd ddpm adm ldm"
if [ ${#GROUPS_SEL[@]} -eq 0 ]; then
    GROUPS_SEL=(edm fid-refs lpips inception)
fi
if [ "$WITH_SD" = 1 ]; then
    GROUPS_SEL+=(sd)
fi
for g in "${GROUPS_SEL[@]}"; do
    case " $ALL_GROUPS " in
        *" $g "*) ;;
        *) echo "error: unknown group '$g'; allowed: $ALL_GROUPS" >&2; exit 2 ;;
    esac
done

WEIGHTS="$CACHE/weights"
FIDREFS="$CACHE/fid-refs"
HUBCK="$TORCH_HUB/checkpoints"
SUMS="$CACHE/SHA256SUMS"
EDM_URL="https://nvlabs-fi-cdn.nvidia.com/edm"
ADM_URL="https://openaipublic.blob.core.windows.net/diffusion/jul-2021"
LDM_URL="https://ommer-lab.com/files/latent-diffusion"

# group|url|destination|known sha256 prefix ("-": unknown)|link to create ("-": none)
FILES=(
    # EDM pickles (NVlabs/edm README): NVIDIA publishes no checksums and none could be verified offline, so no
    # sha256 is pinned ("-"): the first download's sha256 is recorded in SHA256SUMS and re-checked later.
    # ld3's loader reads them safely (allow-list unpickler, no code from the file runs) whatever their content.
    "edm|$EDM_URL/pretrained/edm-cifar10-32x32-uncond-vp.pkl|$WEIGHTS/edm-cifar10-32x32-uncond-vp.pkl|-|-"
    "edm|$EDM_URL/pretrained/edm-cifar10-32x32-cond-vp.pkl|$WEIGHTS/edm-cifar10-32x32-cond-vp.pkl|-|-"
    "edm|$EDM_URL/pretrained/edm-afhqv2-64x64-uncond-vp.pkl|$WEIGHTS/edm-afhqv2-64x64-uncond-vp.pkl|-|-"
    "edm|$EDM_URL/pretrained/edm-ffhq-64x64-uncond-vp.pkl|$WEIGHTS/edm-ffhq-64x64-uncond-vp.pkl|-|-"
    "edm|$EDM_URL/pretrained/edm-imagenet-64x64-cond-adm.pkl|$WEIGHTS/edm-imagenet-64x64-cond-adm.pkl|-|-"
    "edm-ve|$EDM_URL/pretrained/edm-cifar10-32x32-uncond-ve.pkl|$WEIGHTS/edm-cifar10-32x32-uncond-ve.pkl|-|-"
    "edm-ve|$EDM_URL/pretrained/edm-cifar10-32x32-cond-ve.pkl|$WEIGHTS/edm-cifar10-32x32-cond-ve.pkl|-|-"
    "edm-ve|$EDM_URL/pretrained/edm-afhqv2-64x64-uncond-ve.pkl|$WEIGHTS/edm-afhqv2-64x64-uncond-ve.pkl|-|-"
    "edm-ve|$EDM_URL/pretrained/edm-ffhq-64x64-uncond-ve.pkl|$WEIGHTS/edm-ffhq-64x64-uncond-ve.pkl|-|-"
    "fid-refs|$EDM_URL/fid-refs/cifar10-32x32.npz|$FIDREFS/cifar10-32x32.npz|-|-"
    "fid-refs|$EDM_URL/fid-refs/afhqv2-64x64.npz|$FIDREFS/afhqv2-64x64.npz|-|-"
    "fid-refs|$EDM_URL/fid-refs/ffhq-64x64.npz|$FIDREFS/ffhq-64x64.npz|-|-"
    "fid-refs|$EDM_URL/fid-refs/imagenet-64x64.npz|$FIDREFS/imagenet-64x64.npz|-|-"
    "lpips|https://download.pytorch.org/models/vgg16-397923af.pth|$HUBCK/vgg16-397923af.pth|397923af|$WEIGHTS/lpips/vgg16-397923af.pth"
    "lpips|https://download.pytorch.org/models/alexnet-owt-7be5be79.pth|$HUBCK/alexnet-owt-7be5be79.pth|7be5be79|$WEIGHTS/lpips/alexnet-owt-7be5be79.pth"
    "inception|https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth|$WEIGHTS/weights-inception-2015-12-05-6726825d.pth|-|$HUBCK/weights-inception-2015-12-05-6726825d.pth"
    # guided-diffusion (github openai/guided-diffusion README) and CompVis LDM (github CompVis/latent-diffusion
    # README / scripts/download_models.sh). No sha256 is published for these files and none could be verified
    # offline, so none is pinned ("-"): the first download's sha256 is recorded in SHA256SUMS and checked later.
    "adm|$ADM_URL/64x64_diffusion.pt|$WEIGHTS/64x64_diffusion.pt|-|-"
    "adm|$ADM_URL/64x64_classifier.pt|$WEIGHTS/64x64_classifier.pt|-|-"
    "adm|$ADM_URL/256x256_diffusion.pt|$WEIGHTS/256x256_diffusion.pt|-|-"
    "adm|$ADM_URL/256x256_diffusion_uncond.pt|$WEIGHTS/256x256_diffusion_uncond.pt|-|-"
    "adm|$ADM_URL/256x256_classifier.pt|$WEIGHTS/256x256_classifier.pt|-|-"
    "adm|$ADM_URL/ref_batches/imagenet/64/VIRTUAL_imagenet64_labeled.npz|$FIDREFS/VIRTUAL_imagenet64_labeled.npz|-|-"
    "adm|$ADM_URL/ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz|$FIDREFS/VIRTUAL_imagenet256_labeled.npz|-|-"
    "ldm|$LDM_URL/lsun_bedrooms.zip|$WEIGHTS/ldm/lsun_beds256/lsun_bedrooms.zip|-|-"
    "ldm|$LDM_URL/lsun_churches.zip|$WEIGHTS/ldm/lsun_churches256/lsun_churches.zip|-|-"
    "ldm|$LDM_URL/nitro/cin/model.ckpt|$WEIGHTS/ldm/cin256-v2/model.ckpt|-|-"
    "ldm|$ADM_URL/ref_batches/lsun/bedroom/VIRTUAL_lsun_bedroom256.npz|$FIDREFS/VIRTUAL_lsun_bedroom256.npz|-|-"
    "ldm|$ADM_URL/ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz|$FIDREFS/VIRTUAL_imagenet256_labeled.npz|-|-"
)

# group|Hugging Face repo|destination directory|--include patterns (space separated)
SD_FILES="model_index.json scheduler/scheduler_config.json tokenizer/* text_encoder/config.json text_encoder/model.safetensors unet/config.json unet/diffusion_pytorch_model.safetensors vae/config.json vae/diffusion_pytorch_model.safetensors"
# both weight formats are listed: which one a repo holds has not been checked offline; only existing files are fetched
UNET_FILES="config.json scheduler_config.json diffusion_pytorch_model.safetensors diffusion_pytorch_model.bin"
HF_REPOS=(
    "sd|CompVis/stable-diffusion-v1-4|$WEIGHTS/stable-diffusion-v1-4|$SD_FILES"
    "sd|stable-diffusion-v1-5/stable-diffusion-v1-5|$WEIGHTS/stable-diffusion-v1-5|$SD_FILES"
    "ddpm|google/ddpm-cifar10-32|$WEIGHTS/ddpm-cifar10-32|$UNET_FILES"
    "ddpm|google/ddpm-bedroom-256|$WEIGHTS/ddpm-bedroom-256|$UNET_FILES"
    "ddpm|google/ddpm-church-256|$WEIGHTS/ddpm-church-256|$UNET_FILES"
)

selected() {
    local g
    for g in "${GROUPS_SEL[@]}"; do [ "$g" = "$1" ] && return 0; done
    return 1
}

if [ "$LIST" = 1 ]; then
    echo "cache: $CACHE   torch hub: $TORCH_HUB"
    for row in "${FILES[@]}"; do
        IFS='|' read -r grp url dest sha link <<<"$row"
        printf '%-10s %s\n           <- %s\n' "$grp" "$dest" "$url"
        if [ "$sha" != "-" ]; then printf '           sha256 prefix %s\n' "$sha"; fi
        if [ "$link" != "-" ]; then printf '           + link %s\n' "$link"; fi
    done
    for row in "${HF_REPOS[@]}"; do
        IFS='|' read -r grp repo dest inc <<<"$row"
        printf '%-10s %s/\n           <- huggingface.co/%s (%s)\n' "$grp" "$dest" "$repo" "$inc"
    done
    exit 0
fi

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

recorded_sum() {  # the sha256 recorded for a path, or nothing
    [ -f "$SUMS" ] || return 0
    awk -v p="$1" '{ f = substr($0, 67) } f == p { s = $1 } END { if (s) print s }' "$SUMS"
}

record_sum() {
    mkdir -p "$(dirname "$SUMS")"
    local tmp="$SUMS.tmp.$$"
    { [ -f "$SUMS" ] && awk -v p="$2" 'substr($0, 67) != p' "$SUMS"; echo "$1  $2"; } >"$tmp"
    mv -f "$tmp" "$SUMS"
}

file_ok() {  # file_ok PATH KNOWN_PREFIX: present and consistent with what is known about it
    local path="$1" prefix="$2" sum rec
    [ -s "$path" ] || return 1
    rec="$(recorded_sum "$path")"
    if [ "$prefix" = "-" ] && [ -z "$rec" ]; then
        return 0  # nothing to check against (a file placed by hand); keep it
    fi
    sum="$(sha256_of "$path")"
    if [ "$prefix" != "-" ] && [ "${sum:0:${#prefix}}" != "$prefix" ]; then
        echo "warning: $path has sha256 $sum, expected prefix $prefix: fetching it again" >&2
        return 1
    fi
    if [ -n "$rec" ] && [ "$rec" != "$sum" ]; then
        echo "warning: $path changed since it was downloaded (sha256 $sum, recorded $rec): fetching it again" >&2
        return 1
    fi
    return 0
}

fetch_url() {  # fetch_url URL DEST; on failure nothing is left but a non-empty .part (resumed next time)
    local part="$2.part" dir created="" ok=1
    dir="$(dirname "$2")"
    if [ ! -d "$dir" ]; then  # the outermost directory this call creates, removed again if nothing arrives
        created="$dir"
        while [ ! -d "$(dirname "$created")" ]; do created="$(dirname "$created")"; done
        mkdir -p "$dir"
    fi
    if command -v curl >/dev/null 2>&1; then
        curl -fL --retry 3 -C - -o "$part" "$1" || ok=0
    elif command -v wget >/dev/null 2>&1; then
        wget -c -O "$part" "$1" || ok=0
    else
        echo "error: neither curl nor wget is installed" >&2
        ok=0
    fi
    if [ "$ok" = 0 ]; then
        [ -s "$part" ] || rm -f "$part"
        if [ -n "$created" ] && [ -d "$created" ]; then find "$created" -depth -type d -empty -delete; fi
        return 1
    fi
    mv -f "$part" "$2"
}

make_link() {  # make_link TARGET LINK
    [ -e "$2" ] && return 0
    mkdir -p "$(dirname "$2")"
    ln -s "$1" "$2"
}

FAILED=0
for row in "${FILES[@]}"; do
    IFS='|' read -r grp url dest sha link <<<"$row"
    selected "$grp" || continue
    if file_ok "$dest" "$sha"; then
        echo "present   $dest"
    elif [ "$DRY" = 1 ]; then
        echo "would get $dest <- $url"
    else
        echo "getting   $dest <- $url"
        if ! fetch_url "$url" "$dest"; then
            echo "error: download of $url failed" >&2
            FAILED=1
            continue
        fi
        sum="$(sha256_of "$dest")"
        if [ "$sha" != "-" ] && [ "${sum:0:${#sha}}" != "$sha" ]; then
            echo "error: $dest has sha256 $sum, expected prefix $sha; removed" >&2
            rm -f "$dest"
            FAILED=1
            continue
        fi
        record_sum "$sum" "$dest"
    fi
    case "$dest" in
        *.zip)  # the CompVis LSUN archives hold model.ckpt (and config.yaml): extract next to the archive
            if [ "$DRY" = 1 ]; then
                [ -s "$(dirname "$dest")/model.ckpt" ] || echo "would unzip $dest"
            elif [ -s "$dest" ] && [ ! -s "$(dirname "$dest")/model.ckpt" ]; then
                if ! command -v unzip >/dev/null 2>&1; then
                    echo "error: unzip is needed to extract $dest" >&2
                    FAILED=1
                elif ! unzip -o -q "$dest" -d "$(dirname "$dest")"; then
                    echo "error: cannot extract $dest (truncated download? delete it and rerun)" >&2
                    FAILED=1
                fi
            fi ;;
    esac
    if [ "$link" != "-" ]; then
        if [ "$DRY" = 1 ]; then
            [ -e "$link" ] || echo "would link $link -> $dest"
        elif [ -e "$dest" ]; then
            make_link "$dest" "$link"
        fi
    fi
done

hf_cli() {  # the Hugging Face CLI available here: hf (huggingface_hub >= 0.34) or huggingface-cli
    if command -v hf >/dev/null 2>&1; then echo hf
    elif command -v huggingface-cli >/dev/null 2>&1; then echo huggingface-cli
    fi
}

for row in "${HF_REPOS[@]}"; do
    IFS='|' read -r grp repo dest inc <<<"$row"
    selected "$grp" || continue
    if [ "$DRY" = 1 ]; then
        echo "would get $dest/ <- huggingface.co/$repo"
        continue
    fi
    cli="$(hf_cli)"
    if [ -z "$cli" ]; then
        echo "error: group '$grp' needs the Hugging Face CLI: pip install -U huggingface_hub" >&2
        FAILED=1
        continue
    fi
    echo "getting   $dest/ <- huggingface.co/$repo ($cli; files already there are skipped)"
    read -r -a patterns <<<"$inc"
    include_args=()
    if [ "$cli" = hf ]; then
        # hf (typer): --include takes one pattern per flag; `--include a b c` would keep only a and treat b, c
        # as file names
        for pat in "${patterns[@]}"; do include_args+=(--include "$pat"); done
    else
        # huggingface-cli (argparse, nargs='*'): one --include with every pattern (a repeated flag keeps the last)
        include_args=(--include "${patterns[@]}")
    fi
    if ! "$cli" download "$repo" --local-dir "$dest" "${include_args[@]}"; then
        echo "error: $cli download $repo failed (gated repos need 'hf auth login' and accepting the license)" >&2
        FAILED=1
    fi
done

if [ "$FAILED" = 1 ]; then
    echo "some downloads failed (see above)" >&2
    exit 1
fi
[ "$DRY" = 1 ] || echo "done: cache $CACHE"

//! The steps of one training run ([`super::train`]): where it starts
//! ([`Begin`]), the data and the architecture, the variables and the
//! optimiser ([`Run::new`]), one epoch ([`Run::epoch`]: training steps,
//! validation, saving), and the summary.
//!
//! Every random draw keeps its own seeded stream (`Rng::derive(seed, k)`),
//! so the order of these steps is what makes a run reproducible: the same
//! config and data give the same weights, bit for bit.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Tensor, D};
use candle_nn::VarMap;

use super::config::{self, ScalingChoice, TrainConfig};
use super::data;
use super::ema::{Ema, Swapped};
use super::net::{Forward, Net};
use super::optim::Optimizer;
use super::{
    class_weights, loss_fn, progress_bar, read_state, save_state, save_tensors, set_vars,
    soft_targets, topk_scores, validate, EpochRecord, Start, TrainJob, TrainState, TrainSummary,
    LAST, STATE_TENSORS, TRAIN_WEIGHTS, VAL_MANIFEST,
};
use crate::data::dataset::{self, Dataset, Sample};
use crate::data::{load_images, ImageSet};
use crate::error::{Error, IoContext, Result};
use crate::model::checkpoint::{self, CardMetrics, InitSource, LoadedModel, ModelCard};
use crate::model::gcm::{init_varmap, varmap_tensors};
use crate::model::ModelConfig;
use crate::rng::Rng;

/// Input channels, rows and columns.
pub(super) type Shape = (usize, usize, usize);

/// Where a run starts: its configuration, and the state it resumes or the
/// model it fine-tunes (`--init`).
pub(super) struct Begin {
    pub state: Option<TrainState>,
    pub cfg: TrainConfig,
    pub init: Option<LoadedModel>,
}

impl Begin {
    pub fn resolve(job: &TrainJob) -> Result<Self> {
        let begin = match &job.start {
            Start::Resume { epochs } => {
                let st = read_state(&job.out)?;
                let mut cfg = st.config.clone();
                if let Some(e) = epochs {
                    cfg.epochs = *e;
                }
                Begin {
                    state: Some(st),
                    cfg,
                    init: None,
                }
            }
            Start::Fresh { config, init } => Begin {
                state: None,
                cfg: (**config).clone(),
                init: init.as_deref().map(checkpoint::load).transpose()?,
            },
        };
        begin.cfg.validate().map_err(Error::Usage)?;
        Ok(begin)
    }

    /// The classes: the data's, sorted; a resumed or fine-tuned model keeps its own.
    pub fn classes(&self, ds: &Dataset, data: &Path) -> Result<Vec<String>> {
        let classes = match (&self.state, &self.init) {
            (Some(st), _) => st.model.classes.clone(),
            (None, Some(m)) => {
                let own = &m.card.model.classes;
                if let Some(c) = ds.classes.iter().find(|c| !own.contains(c)) {
                    return Err(Error::data(
                        data,
                        format!("label {c:?} is not a class of the --init model ({own:?})"),
                    ));
                }
                own.clone()
            }
            (None, None) => ds.classes.clone(),
        };
        if classes.len() < 2 {
            return Err(Error::data(
                data,
                format!("only one class ({classes:?}): at least two are needed"),
            ));
        }
        Ok(classes)
    }

    /// The model whose architecture the run keeps (resumed or fine-tuned).
    fn fixed(&self) -> Option<&ModelConfig> {
        self.state
            .as_ref()
            .map(|s| &s.model)
            .or(self.init.as_ref().map(|m| &m.card.model))
    }

    /// Input size and channels: the fixed model's, else the config's, else
    /// the first training image's.
    pub fn input_shape(&self, train: &[Sample]) -> Result<Shape> {
        if self.fixed().is_some()
            && self.cfg.model != config::ArchConfig::default()
            && self.state.is_none()
        {
            return Err(Error::Usage(
                "--init keeps the initial model's architecture and scaling: remove the `model:` section from the training config".into(),
            ));
        }
        Ok(match self.fixed() {
            Some(m) => (m.input_channels, m.input_rows, m.input_cols),
            None => {
                let first = crate::data::image_io::decode(&train[0].path)?;
                let ch = crate::data::image_io::channels_of(&first);
                let r = self.cfg.model.input_rows.unwrap_or(first.height() as usize);
                let c = self.cfg.model.input_cols.unwrap_or(first.width() as usize);
                (ch, r, c)
            }
        })
    }

    /// The architecture: the fixed model's, else Table 3 with the config's
    /// changes at `shape` (a `centred` scaling measures the training images).
    pub fn architecture(
        &self,
        (channels, rows, cols): Shape,
        classes: &[String],
        train_set: &ImageSet,
    ) -> Result<ModelConfig> {
        if let Some(m) = self.fixed() {
            return Ok(m.clone());
        }
        let a = &self.cfg.model;
        let arch = a.arch.unwrap_or_default();
        let mut m = ModelConfig::default_for(arch, rows, cols, channels, classes.to_vec());
        a.apply(&mut m);
        m.scaling = a
            .scaling
            .unwrap_or(ScalingChoice::Raw)
            .resolve(|| train_set.channel_mean());
        m.validate()
            .map_err(|msg| Error::Usage(format!("model.{msg}")))?;
        Ok(m)
    }

    /// What the cards say the run started from: `--init`'s model, or what
    /// the interrupted run's state recorded.
    fn init_source(&self) -> Option<InitSource> {
        match (&self.state, &self.init) {
            (Some(st), _) => st.init.clone(),
            (None, Some(m)) => Some(InitSource {
                model: std::fs::canonicalize(&m.dir).unwrap_or_else(|_| m.dir.clone()),
                weights_sha256: m.card.weights_sha256.clone(),
            }),
            (None, None) => None,
        }
    }

    /// Fresh variables, `--init`'s, or those of `last/` (with the
    /// optimiser's own beside the average); returns them with the weight
    /// average (`ema_decay`) and the first epoch to run.
    fn variables(
        &self,
        model_cfg: &ModelConfig,
        job: &TrainJob,
    ) -> Result<(VarMap, Option<Ema>, usize)> {
        let cfg = &self.cfg;
        let varmap = init_varmap(model_cfg, cfg.seed, &job.device)?;
        let mut ema = None;
        let start_epoch = match (&self.state, &self.init) {
            (Some(st), _) => {
                let last_dir = job.out.join(LAST);
                let last = checkpoint::load(&last_dir)?;
                set_vars(&varmap, &last.tensors, &job.device)?;
                if cfg.ema_decay > 0.0 {
                    // last/ holds the averaged weights; the optimiser's are beside them.
                    ema = Some(Ema::new(&varmap, cfg.ema_decay, st.ema_updates)?);
                    let p = last_dir.join(TRAIN_WEIGHTS);
                    let w = candle_core::safetensors::load(&p, &job.device)
                        .map_err(|e| Error::model(&p, e.to_string()))?;
                    set_vars(&varmap, &w, &job.device)
                        .map_err(|e| Error::model(&p, e.to_string()))?;
                }
                st.epochs_done
            }
            (None, Some(m)) => {
                set_vars(&varmap, &m.tensors, &job.device)?;
                0
            }
            (None, None) => 0,
        };
        if ema.is_none() && cfg.ema_decay > 0.0 {
            ema = Some(Ema::new(&varmap, cfg.ema_decay, 0)?);
        }
        Ok((varmap, ema, start_epoch))
    }
}

/// The training and validation images, decoded at `shape` (soft targets
/// checked before the slow decoding).
pub(super) fn load_sets(
    data: &Path,
    cfg: &TrainConfig,
    (train_s, val_s): (&[Sample], &[Sample]),
    classes: &[String],
    (channels, rows, cols): Shape,
) -> Result<(ImageSet, ImageSet)> {
    let class_of = |l: &str| classes.iter().position(|c| c == l);
    tracing::info!(
        images = train_s.len() + val_s.len(),
        "loading images from {}",
        data.display()
    );
    let t0 = Instant::now();
    let soft = match &cfg.soft_target {
        Some(st) => soft_targets(data, train_s, classes, st)?,
        None => Vec::new(),
    };
    let mut train_set = load_images(train_s, class_of, channels, rows, cols, cfg.resize, |_| {})?;
    train_set.targets = soft;
    let val_set = load_images(val_s, class_of, channels, rows, cols, cfg.resize, |_| {})?;
    tracing::info!(
        train = train_set.len(),
        val = val_set.len(),
        seconds = t0.elapsed().as_secs_f64(),
        "loaded {}x{}x{} images",
        rows,
        cols,
        channels
    );
    Ok((train_set, val_set))
}

/// What a training step and an epoch report.
#[derive(Default)]
struct Tally {
    loss_sum: f64,
    correct: usize,
    seen: usize,
}

/// A run in progress.
pub(super) struct Run<'a> {
    job: &'a TrainJob,
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    classes: Vec<String>,
    varmap: VarMap,
    net: Net,
    opt: Optimizer,
    ema: Option<Ema>,
    class_weights: Option<Tensor>,
    data_summary: serde_json::Value,
    init_source: Option<InitSource>,
    best: Option<CardMetrics>,
    history: std::path::PathBuf,
    pub start_epoch: usize,
    last: Option<EpochRecord>,
    epoch_secs: Vec<f64>,
}

/// The data a run was given, as its cards record it.
pub(super) struct DataPlan<'d> {
    pub ds: &'d Dataset,
    pub split: serde_json::Value,
    pub val: &'d [Sample],
}

impl<'a> Run<'a> {
    /// Variables, network and optimiser; the validation list and the
    /// history file written (a fresh run empties the history).
    pub fn new(
        job: &'a TrainJob,
        begin: &Begin,
        model_cfg: ModelConfig,
        classes: Vec<String>,
        plan: DataPlan,
        (train_set, val_set): (&ImageSet, &ImageSet),
    ) -> Result<Self> {
        let cfg = begin.cfg.clone();
        let (varmap, ema, start_epoch) = begin.variables(&model_cfg, job)?;
        let net = Net::new(
            &model_cfg,
            candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &job.device),
        )?;
        net.check(&cfg)?;
        let mut opt = Optimizer::new(
            cfg.optimizer,
            net.trainable(&varmap),
            cfg.momentum,
            cfg.weight_decay,
        );
        if begin.state.is_some() {
            let p = job.out.join(LAST).join(STATE_TENSORS);
            let st = candle_core::safetensors::load(&p, &job.device)
                .map_err(|e| Error::model(&p, e.to_string()))?;
            opt.load_state(&st).map_err(|m| Error::model(&p, m))?;
        }
        if start_epoch >= cfg.epochs {
            return Err(Error::Usage(format!(
                "nothing to do: {start_epoch} epochs are done and the config asks for {}; raise --epochs to train longer",
                cfg.epochs
            )));
        }
        let data_summary = serde_json::json!({
            "source": plan.ds.source,
            "classes": classes,
            "split": plan.split,
            "train_per_class": train_set.per_class(classes.len()),
            "val_per_class": val_set.per_class(classes.len()),
            "val_manifest": VAL_MANIFEST,
            "resized": cfg.resize,
        });
        let class_weights = class_weights(&cfg, train_set, classes.len(), &job.device)?;
        // The validation images by name, so that the model can be evaluated or
        // its errors broken down on exactly them (`eval --data MODEL/validation.csv`).
        // `last/` is a model folder as well, whose card names the same list.
        // The split is seeded: a resumed run writes the same list.
        for dir in [job.out.clone(), job.out.join(LAST)] {
            std::fs::create_dir_all(&dir).at(&dir)?;
            dataset::write_manifest(&dir.join(VAL_MANIFEST), plan.val)?;
        }
        let history = job.out.join("history.jsonl");
        if start_epoch == 0 {
            std::fs::write(&history, b"").at(&history)?;
        }
        tracing::info!(
            parameters = net.num_parameters(),
            epochs = cfg.epochs,
            batch = cfg.batch_size,
            "training {} classes on {:?}",
            classes.len(),
            job.device
        );
        Ok(Run {
            job,
            best: begin.state.as_ref().and_then(|s| s.best.clone()),
            init_source: begin.init_source(),
            cfg,
            model_cfg,
            classes,
            varmap,
            net,
            opt,
            ema,
            class_weights,
            data_summary,
            history,
            start_epoch,
            last: None,
            epoch_secs: Vec::new(),
        })
    }

    pub fn epochs(&self) -> usize {
        self.cfg.epochs
    }

    /// One epoch: training, validation (of the average, with `ema_decay`),
    /// a line on stderr, the models and the state saved.
    pub fn epoch(&mut self, epoch: usize, train_set: &ImageSet, val_set: &ImageSet) -> Result<()> {
        let t = Instant::now();
        let lr = self.cfg.lr_at(epoch);
        let (tally, train_secs) = self.train_epoch(epoch, lr, train_set)?;
        let val_train_weights = match self.ema {
            Some(_) => Some(self.validate(val_set)?.accuracy),
            None => None,
        };
        // Validate and save the averaged weights; the optimiser's come back after.
        let swapped = match &self.ema {
            Some(e) => Some(e.swap_in()?),
            None => None,
        };
        let val = self.validate(val_set)?;
        let rec = EpochRecord {
            epoch: epoch + 1,
            lr,
            train_loss: tally.loss_sum / tally.seen.max(1) as f64,
            train_accuracy: tally.correct as f64 / tally.seen.max(1) as f64,
            val_loss: val.loss,
            val_accuracy: val.accuracy,
            val_accuracy_train_weights: val_train_weights,
            seconds: t.elapsed().as_secs_f64(),
            images_per_second: tally.seen as f64 / train_secs,
        };
        self.report(&rec);
        let metrics = CardMetrics {
            epoch: rec.epoch,
            val_accuracy: val.accuracy,
            val_loss: val.loss,
            val_images: val.images,
            train_accuracy: rec.train_accuracy,
            train_loss: rec.train_loss,
        };
        let best = self.save(epoch, metrics, swapped.as_ref())?;
        if let Some(s) = swapped {
            s.restore()?;
        }
        self.best = best;
        self.epoch_secs.push(rec.seconds);
        self.append_history(&rec)?;
        self.last = Some(rec);
        Ok(())
    }

    /// The training steps of one epoch, in a seeded order; returns the
    /// tally and the seconds they took.
    fn train_epoch(&mut self, epoch: usize, lr: f64, set: &ImageSet) -> Result<(Tally, f64)> {
        let t = Instant::now();
        let seed = self.cfg.seed;
        let mut rng = Rng::derive(seed, 1_000_000 + epoch as u64);
        let mut order: Vec<usize> = (0..set.len()).collect();
        rng.shuffle(&mut order);
        // Its own stream, so that configs without dropout keep theirs.
        let mut drop_rng = Rng::derive(seed, 2_000_000 + epoch as u64);
        let mut mix_rng = Rng::derive(seed, 3_000_000 + epoch as u64);
        let steps = order.len().div_ceil(self.cfg.batch_size);
        let bar_enabled = self.job.progress && std::io::stderr().is_terminal();
        let bar = progress_bar(bar_enabled, steps as u64, epoch, self.cfg.epochs);
        let mut tally = Tally::default();
        for chunk in order.chunks(self.cfg.batch_size) {
            if chunk.len() < 2 && steps > 1 {
                // BatchNorm statistics of a single image are degenerate.
                continue;
            }
            let rngs = (&mut rng, &mut drop_rng, &mut mix_rng);
            let l = self.step(set, chunk, lr, rngs, &mut tally)?;
            if !l.is_finite() {
                return Err(Error::Runtime(format!(
                    "training diverged at epoch {} (loss {l}); lower lr (now {lr})",
                    epoch + 1
                )));
            }
            if let Some(b) = &bar {
                b.set_message(format!(
                    "loss {:.4} acc {:.1}%",
                    tally.loss_sum / tally.seen as f64,
                    100.0 * tally.correct as f64 / tally.seen as f64
                ));
                b.inc(1);
            }
        }
        let secs = t.elapsed().as_secs_f64();
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok((tally, secs))
    }

    /// One optimiser step on the images `chunk` of `set`; returns the loss.
    fn step(
        &mut self,
        set: &ImageSet,
        chunk: &[usize],
        lr: f64,
        (rng, drop_rng, mix_rng): (&mut Rng, &mut Rng, &mut Rng),
        tally: &mut Tally,
    ) -> Result<f64> {
        let cfg = &self.cfg;
        let device = &self.job.device;
        let (x, y) = data::batch(set, chunk, Some((&cfg.augment, rng)), device)?;
        let soft = data::targets(set, chunk, device)?;
        // Mixup trains on blended images and targets; the training
        // accuracy then counts the blend's larger class as the truth.
        let (x, soft, y) = if cfg.mixup > 0.0 {
            let t = match soft {
                Some(t) => t,
                None => candle_nn::encoding::one_hot(y.clone(), self.classes.len(), 1f32, 0f32)?,
            };
            let (x, t) = data::mixup(&x, &t, cfg.mixup, mix_rng)?;
            let y = t.argmax(D::Minus1)?;
            (x, Some(t), y)
        } else {
            (x, soft, y)
        };
        let out: Forward = match &self.net {
            Net::Gcm(net) if cfg.head_dropout > 0.0 => net
                .forward_train(&x, &mut |d: &Tensor| {
                    let mask = data::dropout_mask(d.dims(), cfg.head_dropout, drop_rng);
                    d.mul(&Tensor::from_vec(mask, d.dims(), d.device())?)
                })?
                .into(),
            Net::Gcm(net) => net.forward_t(&x, true)?.into(),
            Net::Cnn(net) => net.forward_t(&x, true)?.into(),
        };
        let weights = self.class_weights.as_ref();
        let loss = loss_fn(&out.scores, &y, soft.as_ref(), weights, cfg.label_smoothing)?;
        let loss = match (&cfg.topk_loss, &out.maps) {
            (Some(t), Some((cwm, scaled))) => {
                let top = topk_scores(cwm, scaled, t.fraction)?;
                let aux = loss_fn(&top, &y, soft.as_ref(), weights, cfg.label_smoothing)?;
                (loss + (aux * t.weight)?)?
            }
            // `Net::check` refused top-k with a network without maps.
            _ => loss,
        };
        let grads = loss.backward()?;
        self.opt.step(&grads, lr)?;
        if let Some(e) = self.ema.as_mut() {
            e.update()?;
        }
        let l = loss.to_scalar::<f32>()? as f64;
        let pred = out.scores.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let truth = y.to_vec1::<u32>()?;
        tally.correct += pred.iter().zip(&truth).filter(|(a, b)| a == b).count();
        tally.loss_sum += l * chunk.len() as f64;
        tally.seen += chunk.len();
        Ok(l)
    }

    fn validate(&self, val_set: &ImageSet) -> Result<crate::eval::EvalReport> {
        validate(
            &self.net,
            val_set,
            &self.classes,
            &self.cfg,
            &self.job.device,
        )
    }

    /// The epoch's line on stderr.
    fn report(&self, rec: &EpochRecord) {
        eprintln!(
            "epoch {:>3}/{}  lr {:<8.1e} loss {:.4}  acc {:>6.2}%  val loss {:.4}  val acc {:>6.2}%{}  {:.1}s ({:.0} img/s)",
            rec.epoch,
            self.cfg.epochs,
            rec.lr,
            rec.train_loss,
            100.0 * rec.train_accuracy,
            rec.val_loss,
            100.0 * rec.val_accuracy,
            rec.val_accuracy_train_weights
                .map(|a| format!(" (averaged; optimiser's {:.2}%)", 100.0 * a))
                .unwrap_or_default(),
            rec.seconds,
            rec.images_per_second
        );
    }

    /// Saves the model (as the best, when it is) and `last/` with the state
    /// `--resume` continues from; returns the best so far.
    fn save(
        &self,
        epoch: usize,
        metrics: CardMetrics,
        swapped: Option<&Swapped>,
    ) -> Result<Option<CardMetrics>> {
        let improved = match &self.best {
            None => true,
            Some(b) => {
                metrics.val_accuracy > b.val_accuracy
                    || (metrics.val_accuracy == b.val_accuracy && metrics.val_loss < b.val_loss)
            }
        };
        let card = |m: &CardMetrics| ModelCard {
            training: Some(serde_json::to_value(&self.cfg).expect("config serialises")),
            data: Some(self.data_summary.clone()),
            metrics: Some(m.clone()),
            init: self.init_source.clone(),
            ..checkpoint::new_card(self.model_cfg.clone())
        };
        let tensors = varmap_tensors(&self.varmap);
        let mut best = self.best.clone();
        if improved {
            checkpoint::save(&self.job.out, &tensors, card(&metrics))?;
            best = Some(metrics.clone());
        }
        let last_dir = self.job.out.join(LAST);
        checkpoint::save(&last_dir, &tensors, card(&metrics))?;
        // Written before the state, which is what --resume trusts.
        if let Some(s) = swapped {
            save_tensors(&last_dir, TRAIN_WEIGHTS, &s.train_weights())?;
        }
        let state = TrainState {
            epochs_done: epoch + 1,
            config: self.cfg.clone(),
            model: self.model_cfg.clone(),
            best: best.clone(),
            data: self.data_summary.clone(),
            ema_updates: self.ema.as_ref().map_or(0, |e| e.updates()),
            init: self.init_source.clone(),
        };
        save_state(&last_dir, &self.opt, &state)?;
        Ok(best)
    }

    fn append_history(&self, rec: &EpochRecord) -> Result<()> {
        let p = &self.history;
        let mut h = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(p)
            .at(p)?;
        writeln!(
            h,
            "{}",
            serde_json::to_string(rec).expect("record serialises")
        )
        .at(p)
    }

    pub fn finish(self) -> Result<TrainSummary> {
        let best = self.best.expect("at least one epoch ran");
        eprintln!(
            "best: epoch {} val acc {:.2}% -> {}",
            best.epoch,
            100.0 * best.val_accuracy,
            self.job.out.display()
        );
        let n = self.epoch_secs.len().max(1) as f64;
        Ok(TrainSummary {
            parameters: self.net.num_parameters(),
            mean_epoch_seconds: self.epoch_secs.iter().sum::<f64>() / n,
            best,
            last: self.last.expect("at least one epoch ran"),
        })
    }
}

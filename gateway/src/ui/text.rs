//! Every string a person reads on the web pages, one table per language: English first,
//! Simplified Chinese second. A page asks for [`Text::of`] its language and nothing else.

/// A page's language: `?lang=` when given, else the browser's `Accept-Language`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    En,
    Zh,
}

impl Lang {
    /// `?lang=zh|en` first, else the first of `Accept-Language` this knows, else English.
    pub(crate) fn choose(query: Option<&str>, accept_language: Option<&str>) -> Self {
        let known = |tag: &str| {
            let tag = tag.trim().to_ascii_lowercase();
            if tag.starts_with("zh") {
                Some(Self::Zh)
            } else if tag.starts_with("en") {
                Some(Self::En)
            } else {
                None
            }
        };
        query
            .and_then(known)
            .or_else(|| {
                accept_language?
                    .split(',')
                    .find_map(|part| known(part.split(';').next().unwrap_or_default()))
            })
            .unwrap_or(Self::En)
    }

    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Zh => "zh",
        }
    }

    /// The other language, for the switch.
    pub(crate) fn other(self) -> Self {
        match self {
            Self::En => Self::Zh,
            Self::Zh => Self::En,
        }
    }
}

/// The strings of the pages.
pub(crate) struct Text {
    /// The language's own name (on the switch to it).
    pub language: &'static str,
    pub pay_title: &'static str,
    pub lot: &'static str,
    pub entered: &'static str,
    pub held: &'static str,
    pub due: &'static str,
    pub includes_owed: &'static str,
    pub account_label: &'static str,
    pub account_hint: &'static str,
    pub pay_button: &'static str,
    pub paid_title: &'static str,
    pub barrier_opening: &'static str,
    pub pending_title: &'static str,
    pub pending_body: &'static str,
    pub refresh: &'static str,
    pub declined: &'static str,
    pub account_missing: &'static str,
    pub receipt: &'static str,
    pub receipt_hint: &'static str,
    pub not_found_title: &'static str,
    pub not_found_body: &'static str,
    pub nothing_due_body: &'static str,
    pub try_again: &'static str,
    pub city_title: &'static str,
    pub free: &'static str,
    pub occupied: &'static str,
    pub unknown: &'static str,
    pub spaces: &'static str,
    pub places: &'static str,
    pub map_label: &'static str,
    pub empty: &'static str,
    pub full: &'static str,
    pub live: &'static str,
    pub busiest: &'static str,
    pub emptiest: &'static str,
}

const EN: Text = Text {
    language: "English",
    pay_title: "Pay for your stay",
    lot: "Car park",
    entered: "Entered",
    held: "At the exit",
    due: "Amount due",
    includes_owed: "includes earlier unpaid stays of this plate",
    account_label: "Card or wallet account",
    account_hint: "Paid through the platform's payment provider.",
    pay_button: "Pay and open the barrier",
    paid_title: "Paid — the barrier is opening",
    barrier_opening: "Thank you. Drive on when the barrier is up.",
    pending_title: "Waiting for your bank",
    pending_body: "The payment has not been confirmed yet. The barrier opens as soon as it is.",
    refresh: "Check again",
    declined: "The payment was declined. Try another account.",
    account_missing: "Enter the account to pay from.",
    receipt: "Receipt",
    receipt_hint: "Keep it: with it you can enrol this plate as yours.",
    not_found_title: "No payment here",
    not_found_body: "This link names no car held at an exit.",
    nothing_due_body: "This stay is not waiting for payment.",
    try_again: "The platform is busy. Try again in a moment.",
    city_title: "Parking in the city now",
    free: "free",
    occupied: "occupied",
    unknown: "unknown",
    spaces: "spaces",
    places: "car parks and street zones",
    map_label: "Map of car parks and street zones, coloured by how full they are",
    empty: "empty",
    full: "full",
    live: "Live; last change at",
    busiest: "Busiest",
    emptiest: "Emptiest",
};

const ZH: Text = Text {
    language: "简体中文",
    pay_title: "支付停车费",
    lot: "停车场",
    entered: "入场时间",
    held: "出口时间",
    due: "应付金额",
    includes_owed: "含本车牌此前未付的停车费",
    account_label: "银行卡或钱包账户",
    account_hint: "通过平台的支付服务商付款。",
    pay_button: "付款并抬杆",
    paid_title: "已付款，道闸正在抬起",
    barrier_opening: "谢谢。道闸抬起后即可驶离。",
    pending_title: "等待银行确认",
    pending_body: "付款尚未确认，确认后道闸立即抬起。",
    refresh: "刷新",
    declined: "付款被拒绝，请换一个账户。",
    account_missing: "请输入付款账户。",
    receipt: "付款凭证",
    receipt_hint: "请保存：凭此可将本车牌登记为您的车牌。",
    not_found_title: "没有待付款项",
    not_found_body: "此链接没有对应在出口等候的车辆。",
    nothing_due_body: "本次停车无需在此付款。",
    try_again: "平台繁忙，请稍后再试。",
    city_title: "全市实时停车",
    free: "空闲",
    occupied: "占用",
    unknown: "未知",
    spaces: "泊位",
    places: "停车场和路内停车区",
    map_label: "停车场和路内停车区地图，颜色表示占用程度",
    empty: "空",
    full: "满",
    live: "实时；最近变化于",
    busiest: "最繁忙",
    emptiest: "最空闲",
};

impl Text {
    pub(crate) fn of(lang: Lang) -> &'static Self {
        match lang {
            Lang::En => &EN,
            Lang::Zh => &ZH,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_wins_then_the_browsers_first_known_language() {
        assert_eq!(Lang::choose(Some("zh"), Some("en")), Lang::Zh);
        assert_eq!(
            Lang::choose(None, Some("fr-FR,zh-CN;q=0.8,en;q=0.5")),
            Lang::Zh
        );
        assert_eq!(Lang::choose(None, Some("en-GB,zh;q=0.5")), Lang::En);
        assert_eq!(Lang::choose(Some("xx"), None), Lang::En);
        assert_eq!(Lang::choose(None, None), Lang::En);
    }
}
